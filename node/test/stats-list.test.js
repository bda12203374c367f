'use strict'
// Per-company statistics and Baileys' optional key-store listing (keys.list / keys.listIds,
// used by its migrateAuthState helper): streamed in pages, values revived like get's.
const test = require('node:test')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys } = require('./helpers/signal.js')

test('stats and paged listing of one type', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url, poolSize: 2 })
  t.after(() => store.close())
  await store.migrate()
  const { state } = await usePostgresAuthState(store, 'list_co')

  const preKeys = {}
  for (let i = 1; i <= 1203; i++) {
    preKeys[i] = { private: Buffer.alloc(32, i % 256), public: Buffer.alloc(33, (i * 7) % 256) }
  }
  const syncKey = B.proto.Message.AppStateSyncKeyData.fromObject({ keyData: Buffer.from('sync-key-bytes'), fingerprint: { rawId: 7 }, timestamp: 1 })
  await state.keys.set({ 'pre-key': preKeys, 'app-state-sync-key': { 'AAAAAAAB/w==': syncKey } })

  // listIds: every id once, across pages (1,203 ids, pages of 500).
  const ids = []
  for await (const id of state.keys.listIds('pre-key')) ids.push(id)
  assert.equal(ids.length, 1203)
  assert.equal(new Set(ids).size, 1203)
  assert.deepEqual([...ids].sort(), Object.keys(preKeys).sort())

  // list: [id, value] with exact Buffers, with a small page size to cross many pages.
  let n = 0
  for await (const [id, value] of store.listKeys('list_co', 'pre-key', 97)) {
    assert.ok(Buffer.isBuffer(value.private) && Buffer.isBuffer(value.public), id)
    assert.ok(value.private.equals(preKeys[id].private), id)
    assert.ok(value.public.equals(preKeys[id].public), id)
    n++
  }
  assert.equal(n, 1203)
  // app-state-sync-key values come back as Baileys' protobuf class, keyData as bytes.
  const synced = []
  for await (const entry of state.keys.list('app-state-sync-key')) synced.push(entry)
  assert.equal(synced.length, 1)
  assert.equal(synced[0][0], 'AAAAAAAB/w==')
  assert.ok(synced[0][1] instanceof B.proto.Message.AppStateSyncKeyData)
  assert.equal(Buffer.from(synced[0][1].keyData).toString(), 'sync-key-bytes')
  // An empty type ends at once.
  for await (const x of state.keys.listIds('sender-key')) assert.fail(`unexpected ${x}`)

  // Statistics of the company and of the whole database.
  const one = await store.stats('list_co')
  assert.equal(one.company_id, 'list_co')
  assert.equal(one.keys, 1204)
  const byType = Object.fromEntries(one.types.map((x) => [x.key_type, x.keys]))
  assert.deepEqual(byType, { 'app-state-sync-key': 1, 'pre-key': 1203 })
  assert.ok(one.bytes > 1203 * 80)
  const all = await store.stats()
  assert.equal(all.company_id, null)
  assert.equal(all.keys, 1204)

  // Bad input is a typed error, never an empty listing.
  await assert.rejects(store.stats('bad id!'), { code: 'EAUTHSTATE_INVALID' })
  await assert.rejects(async () => { for await (const x of store.listKeyIds('list_co', 'pre-key', 0)) void x }, { code: 'EAUTHSTATE_INVALID' })
})
