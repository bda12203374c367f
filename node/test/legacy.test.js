'use strict'
// Rows written by older code (buffers as {type:'Buffer',data:[..]} and {buffer:true,value:b64},
// identity keys as {"0":n,...}) inserted with SQL, then used by libsignal through the addon.
const test = require('node:test')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys, FakeServer, Account, memoryAuth, mapBuffers, SHAPES } = require('./helpers/signal.js')

const GROUP = '120363042222222222@g.us'

test('legacy buffer shapes written by SQL work in libsignal', { timeout: 300000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url })
  await store.migrate()

  // Phase 1: two accounts talk with an in-memory store (as the old module's users did).
  const server = new FakeServer()
  const cfg = {
    alice: { company: 'legacy_array', pn: '5511977770001', lid: '301000000000001', shape: 'array' },
    bob: { company: 'legacy_buffer', pn: '5511977770002', lid: '301000000000002', shape: 'legacy' }
  }
  const mem = { alice: memoryAuth(B), bob: memoryAuth(B) }
  const a1 = new Account(B, mem.alice, { ...cfg.alice, server })
  const b1 = new Account(B, mem.bob, { ...cfg.bob, server })
  await a1.uploadPreKeys(40)
  await b1.uploadPreKeys(40)
  await a1.send(b1, 'first')
  await b1.send(a1, 'second')
  for (let i = 0; i < 5; i++) {
    await a1.send(b1, `m${i}`)
    await b1.send(a1, `n${i}`)
  }
  await a1.sendGroup(GROUP, [b1], 'g1')
  await b1.sendGroup(GROUP, [a1], 'g2')

  // Write every row by SQL in the older shapes.
  const shapeCounts = {}
  for (const who of ['alice', 'bob']) {
    const { company, shape } = cfg[who]
    const toShape = (live, s) => mapBuffers(JSON.parse(JSON.stringify(live, B.BufferJSON.replacer)), SHAPES[s])
    await db.query('INSERT INTO whatsapp_auth (company_id, creds) VALUES ($1, $2::jsonb)',
      [company, JSON.stringify(toShape(mem[who].state.creds, shape))])
    for (const { type, id, value } of mem[who].rows()) {
      // identity keys (Uint8Array) as JSON.stringify(Uint8Array), like code without a replacer wrote
      const s = type === 'identity-key' ? 'uint8' : shape
      shapeCounts[s] = (shapeCounts[s] || 0) + 1
      await db.query('INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ($1, $2, $3, $4::jsonb)',
        [company, type, id, JSON.stringify(toShape(value, s))])
    }
  }
  assert.ok(shapeCounts.array > 30 && shapeCounts.legacy > 30 && shapeCounts.uint8 >= 1, JSON.stringify(shapeCounts))
  const { rows: sample } = await db.query(
    "SELECT value FROM whatsapp_keys WHERE company_id = 'legacy_buffer' AND key_type = 'pre-key' LIMIT 1")
  assert.equal(sample[0].value.private.buffer, true)

  // Phase 2: the same accounts from PostgreSQL through the addon.
  const server2 = FakeServer.fromJSON(B, JSON.stringify(server, B.BufferJSON.replacer))
  const alice = new Account(B, await usePostgresAuthState(store, cfg.alice.company), { ...cfg.alice, server: server2 })
  const bob = new Account(B, await usePostgresAuthState(store, cfg.bob.company), { ...cfg.bob, server: server2 })
  assert.ok(Buffer.isBuffer(alice.creds.signedIdentityKey.private))
  assert.deepEqual(alice.creds.signedIdentityKey.private, Buffer.from(mem.alice.state.creds.signedIdentityKey.private))
  assert.deepEqual(bob.creds.signedPreKey.signature, Buffer.from(mem.bob.state.creds.signedPreKey.signature))
  const ikId = `${cfg.alice.lid}_1.0`
  const ik = await bob.auth.state.keys.get('identity-key', [ikId])
  assert.ok(Buffer.isBuffer(ik[ikId]) && ik[ikId].length === 33)
  assert.deepEqual(ik[ikId], Buffer.from(mem.bob.data.get(`identity-key\u0000${ikId}`)))

  for (let i = 0; i < 10; i++) {
    assert.equal(await alice.send(bob, `after ${i}`), 'msg')
    assert.equal(await bob.send(alice, `reply ${i}`), 'msg')
  }
  for (let i = 0; i < 3; i++) {
    await alice.sendGroup(GROUP, [bob], `legacy group ${i} a`)
    await bob.sendGroup(GROUP, [alice], `legacy group ${i} b`)
  }
  // a new contact uses pre-keys stored in both legacy shapes
  const carol = new Account(B, await usePostgresAuthState(store, 'legacy_new'), { pn: '5511977770003', lid: '301000000000003', server: server2 })
  await carol.uploadPreKeys(10)
  assert.equal(await carol.send(alice, 'hi alice from carol'), 'pkmsg')
  assert.equal(await carol.send(bob, 'hi bob from carol'), 'pkmsg')
  assert.equal(await alice.send(carol, 'hi carol'), 'msg')
  assert.equal(await bob.send(carol, 'hi carol'), 'msg')
  await carol.sendGroup(GROUP, [alice, bob], 'carol in the group')
  await alice.sendGroup(GROUP, [bob, carol], 'alice to all')

  // rows the addon rewrote are in the canonical shape
  const { rows } = await db.query(
    "SELECT value FROM whatsapp_keys WHERE company_id = 'legacy_buffer' AND key_type = 'sender-key'")
  assert.ok(rows.length >= 1)
  for (const r of rows) assert.equal(typeof r.value.data, 'string')
  await store.close()
})
