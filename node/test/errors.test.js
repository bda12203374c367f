'use strict'
// Error codes come from the core's one list (ErrorKind::ALL, via the addon's errorCodes()); the
// addon sets `code`, `sqlstate` and `cause` on the JS error itself. Checked here against the
// TypeScript union, index.js's documentation, and real PostgreSQL errors.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const ts = require('typescript')
const { openStore, AuthStateError, ERROR_CODES, native } = require('..')
const { freshDatabase } = require('./helpers/db.js')

const ROOT = path.join(__dirname, '..')

function unionOfCodes () {
  const file = path.join(ROOT, 'index.d.ts')
  const sf = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true)
  const alias = sf.statements.find((st) => ts.isTypeAliasDeclaration(st) && st.name.text === 'AuthStateErrorCode')
  assert.ok(alias, 'index.d.ts declares AuthStateErrorCode')
  assert.ok(ts.isUnionTypeNode(alias.type))
  return alias.type.types.map((t) => {
    assert.ok(ts.isLiteralTypeNode(t) && ts.isStringLiteral(t.literal), t.getText(sf))
    return t.literal.text
  })
}

function documentedCodes () {
  const text = fs.readFileSync(path.join(ROOT, 'index.js'), 'utf8')
  const doc = text.slice(text.indexOf('/**'), text.indexOf('*/'))
  return [...doc.matchAll(/^\s*\*\s+(EAUTHSTATE_[A-Z_]+)\s/gm)].map((m) => m[1])
}

const sorted = (a) => [...a].sort()

test('the codes are the core list, in the TypeScript union and in index.js docs', () => {
  const core = native.errorCodes()
  assert.equal(core.length, 11)
  assert.equal(new Set(core).size, core.length)
  for (const c of core) assert.match(c, /^EAUTHSTATE_[A-Z_]+$/)
  assert.deepEqual(ERROR_CODES, core)
  assert.ok(Object.isFrozen(ERROR_CODES))
  assert.deepEqual(sorted(unionOfCodes()), sorted(core))
  assert.deepEqual(sorted(documentedCodes()), sorted(core))
})

test('every kind reaches JS with its code set by the addon, thrown or rejected', async () => {
  for (const code of native.errorCodes()) {
    const core = code.replace(/^EAUTHSTATE_/, '')
    let thrown
    try { native.testError(core, false) } catch (e) { thrown = e }
    assert.ok(thrown instanceof Error, code)
    assert.equal(thrown.code, code)
    assert.equal(thrown.message.includes('[EAUTHSTATE'), false, 'no code encoded in the message')
    assert.equal(thrown.sqlstate, undefined)
    await assert.rejects(native.testError(core, true), (e) => e instanceof Error && e.code === code)
    // index.js keeps the addon's object, only giving it the AuthStateError prototype
    const wrapped = require('..').__toAuthError(thrown)
    assert.equal(wrapped, thrown)
    assert.ok(wrapped instanceof AuthStateError)
    assert.equal(wrapped.name, 'AuthStateError')
  }
})

test('database errors carry the SQLSTATE and the cause', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())

  // a database that does not exist: the server answers 3D000 while connecting
  const u = new URL(db.url)
  u.pathname = '/authstate_no_such_db'
  await assert.rejects(openStore({ url: u.toString(), connectTimeoutMs: 5000 }), (e) => {
    assert.ok(e instanceof AuthStateError)
    assert.equal(e.sqlstate, '3D000', e.message)
    assert.ok(ERROR_CODES.includes(e.code), e.code)
    return true
  })

  // a statement PostgreSQL refuses: the table is gone under the store
  const store = await openStore({ url: db.url })
  t.after(() => store.close().catch(() => {}))
  await store.migrate()
  const s = await store.session('sqlstate_co')
  await db.query('DROP TABLE whatsapp_keys')
  await assert.rejects(s.get('pre-key', ['1']), (e) => {
    assert.ok(e instanceof AuthStateError)
    assert.equal(e.code, 'EAUTHSTATE_DATABASE')
    assert.equal(e.sqlstate, '42P01')
    assert.ok(e.cause instanceof Error, 'the underlying error is reachable')
    const texts = []
    for (let c = e.cause; c; c = c.cause) texts.push(c.message)
    assert.ok(texts.some((m) => /whatsapp_keys/.test(m)), texts.join(' <- '))
    return true
  })
})
