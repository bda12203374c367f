'use strict'
// The README's Node example is node/examples/readme.mjs verbatim (test/package.test.js runs it
// against the installed package and type-checks it).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

test('the README Node section starts with npm install and shows examples/readme.mjs verbatim', () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8')
  const start = readme.indexOf('\n## Node\n')
  assert.ok(start >= 0)
  const section = readme.slice(start + 1, readme.indexOf('\n## ', start + 1))
  const blocks = [...section.matchAll(/```(\w+)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1], code: m[2] }))
  assert.deepEqual(blocks[0], { lang: 'sh', code: 'npm install authstate\n' })
  const example = fs.readFileSync(path.join(__dirname, '..', 'examples', 'readme.mjs'), 'utf8')
  assert.ok(blocks.some((b) => b.lang === 'js' && b.code === example), 'a js block equal to examples/readme.mjs')
})
