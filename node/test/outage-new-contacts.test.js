'use strict'
// Issue 9, part 2: first contacts during an outage. Real Baileys (its Signal repository over the
// addon, NO makeCacheableSignalKeyStore in front, so every read reaches the store) for three
// accounts. PostgreSQL is stopped (`pg_ctl stop -m immediate`) while alice and bob are
// messaging; while it is down:
//   - alice messages carol, a NEW contact: the session is built from carol's pre-key bundle
//     (uploaded and stored before the outage), carol decrypts with her stored pre-key and
//     deletes it;
//   - carol starts a session with bob from bob's stored bundle;
//   - alice starts a NEW group (no sender key, no sender-key-memory ever stored) with bob and
//     carol; all three write to it; 1:1 and group traffic continue both ways.
// Each of these first contacts reads keys that were never stored (session, identity-key,
// sender-key, sender-key-memory, lid-mapping of the new contact/group): the store answers
// "absent" from the company's key directory, so no read fails. Then PostgreSQL starts, the
// store replays, every acknowledged write (the last value of every key, deletions too) and the
// creds are in PostgreSQL, checked with SQL; and a NEW Node process continues all 1:1 and group
// traffic from PostgreSQL alone.
//
// The key directories are loaded in the background when a session opens; the README's
// documented condition for answering "absent" is that the company's directory has finished
// loading before the outage begins. The test waits for `store.metrics().directory.companies`
// to cover the three accounts before stopping PostgreSQL.
// Uses its own throwaway cluster (it stops the server), even when DATABASE_URL is set.
// AUTHSTATE_NEW_CONTACTS_OUTAGE_SECONDS (default 15) sets how long the server stays down.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const fs = require('node:fs')
const os = require('node:os')
const { execFile } = require('node:child_process')
const { promisify } = require('node:util')
const { openStore, usePostgresAuthState, bufferReplacer } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys, FakeServer, Account } = require('./helpers/signal.js')

const OLD_GROUP = '120363043333333333@g.us'
const NEW_GROUP = '120363044444444444@g.us'
const OUTAGE_SECONDS = Number(process.env.AUTHSTATE_NEW_CONTACTS_OUTAGE_SECONDS || 15)
const STEP_MS = 100
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const run = promisify(execFile)
// What the store is given and stores: buffers as {type:'Buffer', data:<base64>}.
const canonical = (v) => (v === null || v === undefined ? null : JSON.parse(JSON.stringify(v, bufferReplacer)))
const keyOf = (company, type, id) => JSON.stringify([company, type, id])

// pg_ctl without blocking the event loop, so Baileys traffic runs while the server stops.
async function pgCtl (info, args) {
  const [cmd, ...rest] = info.pg_ctl
  await run(cmd, [...rest, ...args], { timeout: 120000 })
}

test(`new group and new contact while PostgreSQL is stopped for ${OUTAGE_SECONDS} s: absent keys answered, nothing lost, a new process continues`,
  { timeout: 150000 + OUTAGE_SECONDS * 1000 }, async (t) => {
    const db = await freshDatabase({ ownCluster: true })
    const info = db.cluster.info
    let serverDown = false
    let store
    let storeClosed = false
    t.after(async () => {
      if (serverDown) { try { db.startServer() } catch {} }
      if (store && !storeClosed) { try { await store.close() } catch {} }
      await db.close()
    })
    const B = await loadBaileys()
    store = await openStore({ url: db.url, connectTimeoutMs: 1000, statementTimeoutMs: 2000 })
    await store.migrate()

    // Every acknowledged write (the last value of each key), and every read during the outage.
    let phase = 'before'
    const last = new Map() // keyOf -> canonical value (null: deleted)
    const outageKeys = new Set() // keyOf of keys written during the outage
    const absentDuringOutage = {} // type -> ids answered absent while the server was down
    const failedReads = []
    const record = (auth, company) => {
      const { get, set } = auth.state.keys
      auth.state.keys.set = async (data) => {
        const startedIn = phase
        const items = []
        for (const [type, entries] of Object.entries(data || {})) {
          for (const [id, v] of Object.entries(entries || {})) items.push({ type, id, value: canonical(v) })
        }
        await set(data)
        const inOutage = startedIn === 'outage' || phase === 'outage'
        for (const { type, id, value } of items) {
          const k = keyOf(company, type, id)
          last.set(k, value)
          if (inOutage) outageKeys.add(k)
        }
      }
      auth.state.keys.get = async (type, ids) => {
        const inOutage = phase === 'outage'
        try {
          const out = await get(type, ids)
          if (inOutage) {
            for (const id of ids) {
              if (!(id in out)) (absentDuringOutage[type] ||= new Set()).add(`${company}/${id}`)
            }
          }
          return out
        } catch (e) {
          if (inOutage) failedReads.push(`${company}/${type}/${ids.join(',')}: ${e.code} ${e.message}`)
          throw e
        }
      }
      return auth
    }

    const server = new FakeServer()
    const cfg = {
      alice: { company: 'alice_nc', pn: '5511966660001', lid: '203000000000001' },
      bob: { company: 'bob_nc', pn: '5511966660002', lid: '203000000000002' },
      carol: { company: 'carol_nc', pn: '5511966660003', lid: '203000000000003' }
    }
    const open = async (c) => new Account(B, record(await usePostgresAuthState(store, c.company), c.company), { ...c, server })
    const alice = await open(cfg.alice)
    const bob = await open(cfg.bob)
    const carol = await open(cfg.carol)
    const all = [alice, bob, carol]

    // ---- before: alice and bob talk 1:1 and in a group; carol only uploads her pre-keys ------
    for (const a of all) assert.equal(await a.uploadPreKeys(30), 30)
    assert.equal(await alice.send(bob, 'hi bob'), 'pkmsg')
    assert.equal(await bob.send(alice, 'hi alice'), 'msg')
    for (let i = 0; i < 3; i++) {
      await alice.sendGroup(OLD_GROUP, [bob], `before group ${i} from alice`)
      await bob.sendGroup(OLD_GROUP, [alice], `before group ${i} from bob`)
    }
    for (const a of all) await a.auth.saveCreds()
    // The documented condition: every company's key directory has loaded before the outage.
    while (store.metrics().directory.companies < all.length) {
      assert.ok(phase === 'before')
      await sleep(10)
    }
    const carolPreKeysBefore = server.preKeyCount(carol.pnUser)
    const bobPreKeysBefore = server.preKeyCount(bob.pnUser)

    // ---- the server stops in the middle of alice <-> bob traffic ------------------------------
    let stopTraffic = false
    let trafficSent = 0
    const traffic = (async () => {
      while (!stopTraffic) {
        await alice.send(bob, `traffic ${trafficSent} a->b`)
        await bob.send(alice, `traffic ${trafficSent} b->a`)
        await alice.sendGroup(OLD_GROUP, [bob], `traffic ${trafficSent} group from alice`)
        trafficSent++
      }
    })()
    while (trafficSent < 3) await sleep(5)
    phase = 'outage'
    const stoppedAt = performance.now()
    serverDown = true
    await pgCtl(info, ['-m', 'immediate', '-w', 'stop'])
    // Traffic goes on until the store has noticed (a write or read met the stopped server).
    while (!store.metrics().outage.down) {
      assert.ok(performance.now() - stoppedAt < 30000, 'the store did not notice the outage in 30 s')
      await sleep(10)
    }
    const detectMs = Math.round(performance.now() - stoppedAt)
    const sentAtDetect = trafficSent
    await sleep(500)
    stopTraffic = true
    await traffic
    assert.ok(trafficSent > sentAtDetect, 'alice <-> bob traffic went on during the outage')

    // ---- first contacts while PostgreSQL is down ------------------------------------------------
    const firsts = {}
    // a new contact, from carol's stored pre-key bundle; carol decrypts with her stored pre-key
    firsts.aliceToCarol = await alice.send(carol, 'hello carol, first message in an outage')
    firsts.carolToAlice = await carol.send(alice, 'hello alice')
    assert.equal(server.preKeyCount(carol.pnUser), carolPreKeysBefore - 1, 'one of carol\'s stored pre-keys was used')
    // carol starts a session with bob from bob's stored bundle
    firsts.carolToBob = await carol.send(bob, 'hello bob, carol here')
    firsts.bobToCarol = await bob.send(carol, 'hi carol')
    assert.equal(server.preKeyCount(bob.pnUser), bobPreKeysBefore - 1, 'one of bob\'s stored pre-keys was used')
    assert.deepEqual(firsts, { aliceToCarol: 'pkmsg', carolToAlice: 'msg', carolToBob: 'pkmsg', bobToCarol: 'msg' })
    // a new group: every member's sender key is distributed for the first time
    const distributed = {
      alice: await alice.sendGroup(NEW_GROUP, [bob, carol], 'new group, from alice'),
      bob: await bob.sendGroup(NEW_GROUP, [alice, carol], 'new group, from bob'),
      carol: await carol.sendGroup(NEW_GROUP, [alice, bob], 'new group, from carol')
    }
    assert.deepEqual(distributed, { alice: 2, bob: 2, carol: 2 })

    // ---- 1:1 and group traffic both ways for the rest of the outage ----------------------------
    const steps = [
      (i) => alice.send(bob, `outage ${i} a->b`),
      (i) => bob.send(alice, `outage ${i} b->a`),
      (i) => alice.send(carol, `outage ${i} a->c`),
      (i) => carol.send(alice, `outage ${i} c->a`),
      (i) => bob.send(carol, `outage ${i} b->c`),
      (i) => carol.send(bob, `outage ${i} c->b`),
      (i) => alice.sendGroup(NEW_GROUP, [bob, carol], `outage ${i} new group from alice`),
      (i) => bob.sendGroup(NEW_GROUP, [alice, carol], `outage ${i} new group from bob`),
      (i) => carol.sendGroup(NEW_GROUP, [alice, bob], `outage ${i} new group from carol`),
      (i) => bob.sendGroup(OLD_GROUP, [alice], `outage ${i} old group from bob`)
    ]
    let sent = 0
    const end = stoppedAt + OUTAGE_SECONDS * 1000
    while (performance.now() < end || sent < steps.length) {
      const k = sent % steps.length
      try {
        await steps[k](sent)
      } catch (e) {
        throw new Error(`step ${k} of message ${sent} failed ${Math.round(performance.now() - stoppedAt)} ms into the outage: ${e.stack || e}`)
      }
      sent++
      await sleep(STEP_MS)
    }
    for (const a of all) await a.auth.saveCreds()
    const during = store.metrics().outage
    assert.equal(during.down, true, 'still in outage while the server is stopped')
    assert.equal(during.outages, 1)
    assert.ok(during.pending_calls > 0, 'writes were kept as pending calls')
    assert.deepEqual(failedReads, [], 'no read failed during the outage')
    // The reads that used to fail: keys never stored, answered absent from the key directory.
    const absent = (type, company, prefixes) => [...(absentDuringOutage[type] || [])]
      .some((x) => prefixes.some((p) => x.startsWith(`${company}/${p}`)))
    const userOf = (a) => [a.lidUser, a.pnUser] // a session lives under the LID (or the PN)
    assert.ok(absent('sender-key-memory', 'alice_nc', [NEW_GROUP]), 'the new group\'s sender-key-memory answered absent')
    assert.ok(absent('sender-key', 'bob_nc', [NEW_GROUP]), 'the new group\'s sender keys answered absent')
    assert.ok(absent('session', 'alice_nc', userOf(carol)), 'alice\'s session with carol answered absent')
    assert.ok(absent('session', 'carol_nc', userOf(bob)), 'carol\'s session with bob answered absent')

    // ---- the server comes back -------------------------------------------------------------
    const startIssuedAt = performance.now()
    await pgCtl(info, ['-l', path.join(info.data_dir, '..', 'server.log'), '-w', 'start'])
    serverDown = false
    while (store.metrics().outage.down) {
      assert.ok(performance.now() - startIssuedAt < 60000, 'the store did not recover within 60 s of the server start')
      await sleep(10)
    }
    const recoverMs = Math.round(performance.now() - startIssuedAt)
    phase = 'after'
    const after = store.metrics().outage
    assert.equal(after.pending_calls, 0)
    assert.equal(after.pending_bytes, 0)

    // Traffic goes on against the database, then the store flushes and closes.
    for (let i = 0; i < steps.length; i++) await steps[i](`after ${i}`)
    for (const a of all) await a.auth.saveCreds()
    const closed = await store.close()
    storeClosed = true
    assert.deepEqual(closed.unflushed, [], 'close had nothing left to flush')

    // ---- SQL: exactly the keys Baileys wrote, each with its last value; the creds ----------------
    const companies = all.map((a) => a.auth.session.companyId)
    const { rows } = await db.query(
      'SELECT company_id, key_type, key_id, value::text AS v FROM whatsapp_keys WHERE company_id = ANY($1)', [companies])
    const inDb = new Map(rows.map((r) => [keyOf(r.company_id, r.key_type, r.key_id), JSON.parse(r.v)]))
    const lost = []
    for (const [k, value] of last) {
      if (value === null) {
        if (inDb.has(k)) lost.push({ key: k, expected: 'deleted', inDb: 'present' })
      } else if (!inDb.has(k)) {
        lost.push({ key: k, expected: 'value', inDb: 'absent' })
      } else {
        try { assert.deepStrictEqual(inDb.get(k), value) } catch { lost.push({ key: k, expected: 'value', inDb: 'other value' }) }
      }
    }
    const unexpected = [...inDb.keys()].filter((k) => !last.has(k))
    assert.deepEqual(lost, [], 'every acknowledged write is in PostgreSQL, byte-exact (deletions too)')
    assert.deepEqual(unexpected, [], 'PostgreSQL holds no key Baileys did not write')
    for (const a of all) {
      const { rows: [c] } = await db.query('SELECT creds::text AS v FROM whatsapp_auth WHERE company_id = $1', [a.auth.session.companyId])
      assert.deepStrictEqual(JSON.parse(c.v), canonical(a.creds), `creds of ${a.auth.session.companyId}`)
    }
    // What the first contacts wrote during the outage is there: the new group's sender keys
    // (each member holds all three) and sender-key-memory, the new contacts' sessions.
    const count = async (sql, params) => Number((await db.query(sql, params)).rows[0].n)
    for (const company of companies) {
      assert.equal(await count("SELECT count(*) AS n FROM whatsapp_keys WHERE company_id = $1 AND key_type = 'sender-key' AND key_id LIKE $2",
        [company, NEW_GROUP + '%']), 3, `${company}: sender keys of the new group`)
      assert.equal(await count("SELECT count(*) AS n FROM whatsapp_keys WHERE company_id = $1 AND key_type = 'sender-key-memory' AND key_id = $2",
        [company, NEW_GROUP]), 1, `${company}: sender-key-memory of the new group`)
    }
    for (const [company, peer] of [['alice_nc', carol], ['carol_nc', alice], ['carol_nc', bob], ['bob_nc', carol]]) {
      assert.ok(await count("SELECT count(*) AS n FROM whatsapp_keys WHERE company_id = $1 AND key_type = 'session' AND (key_id LIKE $2 OR key_id LIKE $3)",
        [company, peer.lidUser + '%', peer.pnUser + '%']) >= 1, `${company}: session with ${peer.pnUser}`)
    }
    const byType = {}
    for (const k of outageKeys) { const type = JSON.parse(k)[1]; byType[type] = (byType[type] || 0) + 1 }
    const summary = {
      outageSeconds: OUTAGE_SECONDS,
      detectMs,
      recoverMs,
      messagesInOutage: sent + 3 * (trafficSent - sentAtDetect) + 4,
      keysWrittenDuringOutage: outageKeys.size,
      keysByType: byType,
      absentReadsByType: Object.fromEntries(Object.entries(absentDuringOutage).map(([k, v]) => [k, v.size])),
      keysInDb: inDb.size,
      lost: lost.length
    }
    console.log('new-contacts outage summary ' + JSON.stringify(summary))
    t.diagnostic(`detect ${detectMs} ms, recover ${recoverMs} ms, ${outageKeys.size} keys written during the outage, lost ${lost.length}`)

    // ---- a new process continues from PostgreSQL alone ------------------------------------------
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-new-contacts-'))
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
    const serverFile = path.join(dir, 'server.json')
    fs.writeFileSync(serverFile, JSON.stringify(server, B.BufferJSON.replacer))
    const arg = JSON.stringify({
      url: db.url, serverFile, accounts: [cfg.alice, cfg.bob, cfg.carol], groups: [OLD_GROUP, NEW_GROUP], rounds: 2
    })
    const { stdout } = await run(process.execPath,
      [path.join(__dirname, 'helpers', 'continue-all.js'), arg], { maxBuffer: 16 << 20, timeout: 120000 })
    const report = JSON.parse(stdout.trim().split('\n').pop())
    assert.equal(report.oneToOne, 12)
    assert.deepEqual(report.types, { msg: 12 }, 'every pair continued its session')
    assert.equal(report.group, 6)
    // carol was never in the old group: alice and bob hand her their sender keys, and she
    // hands hers to both; in the new group everybody already has everybody's.
    assert.equal(report.distributed, 4, 'only the old group\'s sender keys for carol were new')
    assert.equal(report.lookups, 0, 'LID mappings were read from PostgreSQL')
    for (const a of all) assert.equal(report.creds[a.pnUser].registrationId, a.creds.registrationId)
    assert.deepEqual(report.closed.unflushed, [])
  })
