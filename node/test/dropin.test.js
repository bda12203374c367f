'use strict'
// The old module's API (auth-state-timeweb.js) on the shared store: useTimewebAuthState opens
// one store per process from DATABASE_URL, migrates it once, and is shared by every company;
// removeTimewebAuthState deletes one company's state; getQueryMetrics reads the store's metrics.
const test = require('node:test')
const assert = require('node:assert/strict')
const {
  useTimewebAuthState, removeTimewebAuthState, getQueryMetrics, sharedStore, closeSharedStore,
  AuthStateError
} = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys } = require('./helpers/signal.js')

test('useTimewebAuthState and the old helpers on one shared store', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const saved = process.env.DATABASE_URL
  t.after(() => {
    if (saved === undefined) delete process.env.DATABASE_URL
    else process.env.DATABASE_URL = saved
  })

  // an unreachable database: the error is typed, and the failure is not cached
  process.env.DATABASE_URL = 'postgres://nobody@127.0.0.1:1/none?connect_timeout=2'
  await assert.rejects(useTimewebAuthState('co_a'),
    (e) => e instanceof AuthStateError && ['EAUTHSTATE_UNAVAILABLE', 'EAUTHSTATE_TIMEOUT'].includes(e.code))
  assert.equal(getQueryMetrics(), null)

  process.env.DATABASE_URL = db.url
  const a = await useTimewebAuthState('co_a')
  const b = await useTimewebAuthState('co_b', { sessionPool: {} })
  assert.equal(await sharedStore(), await sharedStore(), 'one store per process')
  const { rows: migrations } = await db.query('SELECT count(*)::int AS n FROM schema_migrations')
  assert.ok(migrations[0].n >= 1, 'migrated on first use')

  a.state.creds.me = { id: '5511900000001:1@s.whatsapp.net' }
  await a.saveCreds()
  await b.saveCreds()
  const pair = B.Curve.generateKeyPair()
  await a.state.keys.set({ 'pre-key': { 1: pair }, session: { 'x.0': { s: 'a' } } })
  await b.state.keys.set({ 'pre-key': { 1: pair } })
  const again = await useTimewebAuthState('co_a')
  assert.deepEqual(again.state.creds.me, a.state.creds.me)
  assert.deepEqual((await again.state.keys.get('pre-key', ['1']))['1'], pair)

  const m = getQueryMetrics()
  assert.ok(m && Array.isArray(m.ops) && m.ops.length > 0, JSON.stringify(m))

  await removeTimewebAuthState('co_a')
  const count = async (co) => (await db.query(
    'SELECT (SELECT count(*) FROM whatsapp_keys WHERE company_id = $1)::int AS k, (SELECT count(*) FROM whatsapp_auth WHERE company_id = $1)::int AS a',
    [co])).rows[0]
  assert.deepEqual(await count('co_a'), { k: 0, a: 0 })
  assert.deepEqual(await count('co_b'), { k: 1, a: 1 }, 'other companies are untouched')
  assert.deepEqual(await again.state.keys.get('pre-key', ['1']), {})
  await assert.rejects(removeTimewebAuthState('bad id'), { code: 'EAUTHSTATE_INVALID' })

  const report = await closeSharedStore()
  assert.equal(typeof report, 'object')
  assert.equal(getQueryMetrics(), null)
  assert.equal(await closeSharedStore(), null)
  // a later call opens a new shared store
  const c = await useTimewebAuthState('co_b')
  assert.deepEqual((await c.state.keys.get('pre-key', ['1']))['1'], pair)
  await closeSharedStore()
})
