'use strict'
// `import {...} from 'authstate'` gives the same objects as `require('authstate')`.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { pathToFileURL } = require('node:url')
const pkg = require('../package.json')

test('the ES module entry exports exactly what the CommonJS entry exports', async () => {
  const cjs = require('..')
  const esm = await import(pathToFileURL(path.join(__dirname, '..', pkg.exports['.'].import.default)).href)
  assert.deepEqual(Object.keys(esm).filter((k) => k !== 'default').sort(), Object.keys(cjs).sort())
  for (const k of Object.keys(cjs)) assert.equal(esm[k], cjs[k], k)
  assert.equal(esm.default, cjs)
  assert.equal(require.resolve('..'), path.join(__dirname, '..', pkg.exports['.'].require.default))
})
