'use strict'
// Real Baileys Signal traffic through the addon, across a restart of the Node process.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const fs = require('node:fs')
const os = require('node:os')
const { execFile } = require('node:child_process')
const { promisify } = require('node:util')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys, FakeServer, Account } = require('./helpers/signal.js')

const GROUP = '120363041111111111@g.us'

test('two accounts: 812 pre-keys, pkmsg/msg both ways, groups, then a new process continues', { timeout: 600000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url })
  await store.migrate()

  const server = new FakeServer()
  const cfgA = { company: 'alice_co', pn: '5511988880001', lid: '201000000000001' }
  const cfgB = { company: 'bob-co', pn: '5511988880002', lid: '201000000000002' }
  const alice = new Account(B, await usePostgresAuthState(store, cfgA.company), { ...cfgA, server })
  const bob = new Account(B, await usePostgresAuthState(store, cfgB.company), { ...cfgB, server })

  await t.test('812-pre-key upload via keys.set', async () => {
    assert.equal(await alice.uploadPreKeys(), 812)
    assert.equal(await bob.uploadPreKeys(), 812)
    const { rows } = await db.query(
      "SELECT company_id, count(*)::int AS n FROM whatsapp_keys WHERE key_type = 'pre-key' GROUP BY 1 ORDER BY 1")
    assert.deepEqual(rows, [{ company_id: 'alice_co', n: 812 }, { company_id: 'bob-co', n: 812 }])
    const { rows: creds } = await db.query("SELECT creds->>'nextPreKeyId' AS next FROM whatsapp_auth WHERE company_id = 'alice_co'")
    assert.equal(creds[0].next, '813')
    // what Baileys reads back is exact bytes
    const got = await alice.auth.state.keys.get('pre-key', ['1', '812', '813'])
    assert.deepEqual(Object.keys(got), ['1', '812'])
    assert.ok(Buffer.isBuffer(got['1'].private) && got['1'].private.length === 32)
  })

  await t.test('pkmsg then msg both ways, 25 round trips', async () => {
    const types = []
    types.push(await alice.send(bob, 'hi bob'))
    types.push(await bob.send(alice, 'hi alice'))
    for (let i = 0; i < 25; i++) {
      types.push(await alice.send(bob, `a->b ${i}`))
      types.push(await bob.send(alice, `b->a ${i}`))
    }
    assert.equal(types[0], 'pkmsg')
    assert.ok(types.slice(1).every((x) => x === 'msg'), 'after the first answer every message is a msg')
    const { rows } = await db.query(
      "SELECT company_id, key_type, count(*)::int AS n FROM whatsapp_keys WHERE key_type IN ('session','identity-key','lid-mapping') GROUP BY 1, 2 ORDER BY 1, 2")
    assert.ok(rows.some((r) => r.company_id === 'alice_co' && r.key_type === 'session'))
    assert.ok(rows.some((r) => r.company_id === 'bob-co' && r.key_type === 'identity-key'))
    // bob consumed one of his pre-keys when alice's pkmsg arrived
    const { rows: pk } = await db.query("SELECT count(*)::int AS n FROM whatsapp_keys WHERE company_id = 'bob-co' AND key_type = 'pre-key'")
    assert.equal(pk[0].n, 811)
  })

  await t.test('group messages via sender keys, both ways', async () => {
    for (let i = 0; i < 5; i++) {
      await alice.sendGroup(GROUP, [bob], `group ${i} from alice`)
      await bob.sendGroup(GROUP, [alice], `group ${i} from bob`)
    }
    const { rows } = await db.query(
      "SELECT company_id, key_type, count(*)::int AS n FROM whatsapp_keys WHERE key_type IN ('sender-key','sender-key-memory') GROUP BY 1, 2 ORDER BY 1, 2")
    assert.deepEqual(rows.map((r) => `${r.company_id}/${r.key_type}`),
      ['alice_co/sender-key', 'alice_co/sender-key-memory', 'bob-co/sender-key', 'bob-co/sender-key-memory'])
  })

  await alice.auth.saveCreds()
  await bob.auth.saveCreds()
  const closed = await store.close()
  assert.ok(closed && typeof closed === 'object')

  await t.test('a new Node process rebuilds both from PostgreSQL and continues', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-node-'))
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
    const serverFile = path.join(dir, 'server.json')
    fs.writeFileSync(serverFile, JSON.stringify(server, B.BufferJSON.replacer))
    const arg = JSON.stringify({
      url: db.url,
      serverFile,
      accounts: [cfgA, cfgB],
      group: GROUP,
      rounds: 10,
      newContact: { company: 'carol_co', pn: '5511988880003', lid: '201000000000003' }
    })
    const { stdout } = await promisify(execFile)(process.execPath,
      [path.join(__dirname, 'helpers', 'continue.js'), arg], { maxBuffer: 16 << 20 })
    const report = JSON.parse(stdout.trim().split('\n').pop())
    assert.equal(report.oneToOne, 20)
    assert.equal(report.group, 6)
    assert.equal(report.lookups, 0, 'LID mappings were read from PostgreSQL')
    assert.equal(report.newContactFirst, 'pkmsg')
    assert.deepEqual(Object.keys(report.types), ['msg'])
    assert.equal(report.creds[cfgA.pn].registrationId, alice.creds.registrationId)
    assert.equal(report.creds[cfgA.pn].nextPreKeyId, 813)
    // carol's session used one of alice's stored pre-keys, which is now gone
    const { rows } = await db.query("SELECT count(*)::int AS n FROM whatsapp_keys WHERE company_id = 'alice_co' AND key_type = 'pre-key'")
    assert.equal(rows[0].n, 811)
  })
})
