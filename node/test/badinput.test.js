'use strict'
// Bad input from JS gets a coded error and writes nothing; a panic never kills Node.
const test = require('node:test')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState, AuthStateError, native } = require('..')
const { freshDatabase } = require('./helpers/db.js')

const INVALID = { code: 'EAUTHSTATE_INVALID' }

test('bad input is refused with EAUTHSTATE_INVALID and nothing is written', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  await assert.rejects(openStore('postgres://x'), INVALID)
  await assert.rejects(openStore({ url: db.url, poolSize: 'ten' }), INVALID)
  await assert.rejects(openStore({ url: db.url, poolSize: -1 }), INVALID)
  await assert.rejects(openStore({ url: db.url, noSuchOption: 1 }), INVALID)
  await assert.rejects(openStore({ url: db.url, outagePolicy: 'sometimes' }), INVALID)
  await assert.rejects(openStore({ url: 'postgres://x/y?sslmode=maybe' }), INVALID)
  await assert.rejects(openStore({ url: db.url, poolSize: 10n }), INVALID)
  await assert.rejects(openStore({ url: db.url, preparedStatements: 'sometimes' }), INVALID)
  await (await openStore({ url: db.url, preparedStatements: 'off' })).close()
  const store = await openStore({ url: db.url })
  await store.migrate()

  for (const id of [123, null, undefined, {}, '', 'has space', 'a/b', 'x'.repeat(51), 'ção', 'a\u0000b']) {
    await assert.rejects(store.session(id), INVALID, `company id ${JSON.stringify(id)}`)
  }
  await assert.rejects(usePostgresAuthState({}, 'ok_id'), INVALID)
  await assert.rejects(usePostgresAuthState(store, 'bad id'), INVALID)

  const s = await store.session('bad_input_co')
  const cyclic = { a: 1 }
  cyclic.self = cyclic
  const good = { private: Buffer.alloc(32, 7), public: Buffer.alloc(32, 9) }
  const badSets = [
    undefined, null, 'x', 42, [], [{ 'pre-key': {} }], Buffer.alloc(3),
    { 'pre-key': 'x' },
    { 'pre-key': [good] },
    { 'pre-key': { 1: good, 2: 10n } },
    { 'pre-key': { 1: good, 2: cyclic } },
    { 'pre-key': { 1: good, 2: () => 1 } },
    { 'pre-key': { 1: good, 2: Symbol('s') } },
    { 'pre-key': { 1: good }, session: { 'a@b': { x: { y: 1n } } } },
    { 'pre-key': { 1: good, '': good } },
    { 'pre-key': { 1: good, 'a\u0000b': good } },
    { '': { 1: good } },
    { 'pre-key': { 1: good, ['k'.repeat(5000)]: good } }
  ]
  for (const bad of badSets) {
    await assert.rejects(s.set(bad), INVALID, `set(${String(bad && Object.keys(bad))})`)
  }
  await assert.rejects(s.saveCreds('creds'), INVALID)
  await assert.rejects(s.saveCreds(null), INVALID)
  await assert.rejects(s.saveCreds({ a: 1n }), INVALID)
  await assert.rejects(s.saveCreds(cyclic), INVALID)
  await assert.rejects(s.get(1, ['a']), INVALID)
  await assert.rejects(s.get('pre-key', 'a'), INVALID)
  await assert.rejects(s.get('pre-key', [1]), INVALID)
  await assert.rejects(s.get('pre-key', [null]), INVALID)
  await assert.rejects(s.get('pre-key', ['']), INVALID)
  await assert.rejects(s.get('', ['a']), INVALID)

  // a set() that throws synchronously inside still returns a rejected Promise (no sync throw)
  const p = s.set(null)
  assert.ok(p instanceof Promise)
  await assert.rejects(p, (e) => e instanceof AuthStateError && e.code === 'EAUTHSTATE_INVALID' && /set/.test(e.message))

  const { rows } = await db.query("SELECT (SELECT count(*) FROM whatsapp_keys)::int AS k, (SELECT count(*) FROM whatsapp_auth)::int AS a")
  assert.deepEqual(rows[0], { k: 0, a: 0 }, 'nothing was written')

  // the session still works after all that
  await s.set({ 'pre-key': { 1: good } })
  assert.deepEqual((await s.get('pre-key', ['1']))['1'], good)
  await store.close()
})

test('an unreachable database is EAUTHSTATE_UNAVAILABLE/TIMEOUT, never an empty answer', { timeout: 60000 }, async () => {
  let store
  try {
    store = await openStore({ url: 'postgres://nobody@127.0.0.1:1/none', connectTimeoutMs: 500, statementTimeoutMs: 1000 })
  } catch (e) {
    assert.ok(['EAUTHSTATE_UNAVAILABLE', 'EAUTHSTATE_TIMEOUT'].includes(e.code), e.code)
    return
  }
  const s = await store.session('down_co')
  await assert.rejects(s.get('session', ['a.0']), (e) => ['EAUTHSTATE_UNAVAILABLE', 'EAUTHSTATE_TIMEOUT'].includes(e.code))
  await store.close().catch(() => {})
})

test('a panic in the addon becomes EAUTHSTATE_INTERNAL and Node keeps running', async () => {
  assert.throws(() => {
    try { native.testPanic(false) } catch (e) { throw require('..').__toAuthError(e) }
  }, { code: 'EAUTHSTATE_INTERNAL' })
  await assert.rejects(native.testPanic(true), (e) => e.code === 'EAUTHSTATE_INTERNAL' && /panic/.test(e.message))
  assert.equal(1 + 1, 2)
})
