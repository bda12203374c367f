'use strict'
// A get of many ids (64 or more) is answered in parts as PostgreSQL sends the rows, each part
// parsed while the next arrive. It must answer exactly like a get of few ids: exact Buffers,
// protobuf app-state-sync-keys, absent ids missing, "__proto__" an own key, errors rejecting.
const test = require('node:test')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys } = require('./helpers/signal.js')
const { Client } = require('pg')

test('a get of many ids answers like gets of one id each', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url, lease: false })
  t.after(() => store.close())
  await store.migrate()
  const { state } = await usePostgresAuthState(store, 'parts_co')
  const preKeys = {}
  for (let i = 1; i <= 450; i++) preKeys[i] = { private: Buffer.alloc(32, i % 256), public: Buffer.alloc(33, (i * 7) % 256) }
  const data = { 'pre-key': preKeys }
  Object.defineProperty(data['pre-key'], '__proto__', { value: { private: Buffer.from([9]), public: Buffer.from([8]) }, enumerable: true })
  const sync = {}
  for (let i = 0; i < 70; i++) {
    sync[Buffer.from([0, 0, 0, i]).toString('base64')] = B.proto.Message.AppStateSyncKeyData.fromObject({ keyData: Buffer.alloc(32, i), fingerprint: { rawId: i }, timestamp: i })
  }
  data['app-state-sync-key'] = sync
  await state.keys.set(data)

  // A second store: an empty cache, so every value comes from PostgreSQL in parts.
  const cold = await openStore({ url: db.url, lease: false })
  t.after(() => cold.close())
  const { state: s2 } = await usePostgresAuthState(cold, 'parts_co')
  const ids = [...Object.keys(preKeys), '__proto__', 'absent-1', 'absent-2', '7']
  const got = await s2.keys.get('pre-key', ids)
  assert.equal(Object.getPrototypeOf(got), Object.prototype, 'no id changes the prototype')
  assert.equal(Object.keys(got).length, 451)
  assert.ok(Object.prototype.hasOwnProperty.call(got, '__proto__'))
  assert.ok(got.__proto__.private.equals(Buffer.from([9]))) // eslint-disable-line no-proto
  for (const id of Object.keys(preKeys)) {
    assert.ok(Buffer.isBuffer(got[id].private) && got[id].private.equals(preKeys[id].private), id)
    assert.ok(got[id].public.equals(preKeys[id].public), id)
    // The same as a get of that one id (cached now, so also the cache's answer).
    const one = await s2.keys.get('pre-key', [id])
    assert.ok(one[id].public.equals(got[id].public), id)
  }
  assert.ok(!('absent-1' in got))

  const syncIds = Object.keys(sync)
  const keys = await (await usePostgresAuthState(await openStore({ url: db.url, lease: false }).then((s) => { t.after(() => s.close()); return s }), 'parts_co')).state.keys.get('app-state-sync-key', syncIds)
  assert.equal(Object.keys(keys).length, 70)
  for (const id of syncIds) {
    assert.ok(keys[id] instanceof B.proto.Message.AppStateSyncKeyData, id)
    assert.ok(Buffer.from(keys[id].keyData).equals(Buffer.from(sync[id].keyData)), id)
  }

  // A database error rejects the whole get with a code, never a short answer.
  const c = new Client({ connectionString: db.url })
  c.on('error', () => {}) // the database is dropped at the end
  await c.connect()
  t.after(() => c.end())
  const third = await openStore({ url: db.url, lease: false })
  t.after(() => third.close())
  const { state: s3 } = await usePostgresAuthState(third, 'parts_co')
  await c.query('ALTER TABLE whatsapp_keys RENAME TO whatsapp_keys_gone')
  await assert.rejects(s3.keys.get('pre-key', Object.keys(preKeys)), (e) => e.code === 'EAUTHSTATE_DATABASE')
  await c.query('ALTER TABLE whatsapp_keys_gone RENAME TO whatsapp_keys')
  // Bad input is refused before any SQL.
  await assert.rejects(s3.keys.get('pre-key', [...Object.keys(preKeys), '']), (e) => e.code === 'EAUTHSTATE_INVALID')
})
