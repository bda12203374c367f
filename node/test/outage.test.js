'use strict'
// Issue 5, first fault test: PostgreSQL stopped (`pg_ctl stop -m immediate`) while real Baileys
// traffic (two accounts, 1:1 both ways and a group) runs through the addon. Messaging continues
// from the cache and the pending log for AUTHSTATE_OUTAGE_SECONDS (default 60); the server comes
// back; every key written during the outage is in PostgreSQL, byte-exact; a new Node process
// restores both accounts from PostgreSQL alone and keeps messaging.
// Uses its own throwaway cluster (it stops the server), even when DATABASE_URL is set.
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

const GROUP = '120363042222222222@g.us'
const OUTAGE_SECONDS = Number(process.env.AUTHSTATE_OUTAGE_SECONDS || 60)
const STEP_MS = 250
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// What the store is given and stores: buffers as {type:'Buffer', data:<base64>}.
const canonical = (v) => (v === null || v === undefined ? null : JSON.parse(JSON.stringify(v, bufferReplacer)))
const keyOf = (company, type, id) => JSON.stringify([company, type, id])

test(`PostgreSQL stopped for ${OUTAGE_SECONDS} s under Baileys traffic: no decryption failure, nothing lost, a new process continues`,
  { timeout: 240000 + OUTAGE_SECONDS * 1000 }, async (t) => {
    const db = await freshDatabase({ ownCluster: true })
    let serverDown = false
    let store
    let storeClosed = false
    let poll
    t.after(async () => {
      clearInterval(poll)
      if (serverDown) { try { db.startServer() } catch {} }
      if (store && !storeClosed) { try { await store.close() } catch {} }
      await db.close()
    })
    const B = await loadBaileys()
    store = await openStore({ url: db.url, connectTimeoutMs: 1000, statementTimeoutMs: 2000 })
    await store.migrate()

    // Every acknowledged write: the last value of each key, and the keys written in the outage.
    let phase = 'before'
    const last = new Map() // keyOf -> canonical value (null: deleted)
    const outageKeys = new Map() // keyOf -> { company, type, id }
    let outageWrites = 0 // acknowledged set() calls while in outage phase
    const recordWrites = (auth, company) => {
      const set = auth.state.keys.set
      auth.state.keys.set = async (data) => {
        const startedIn = phase
        const items = []
        for (const [type, entries] of Object.entries(data || {})) {
          for (const [id, v] of Object.entries(entries || {})) items.push({ type, id, value: canonical(v) })
        }
        await set(data)
        const inOutage = startedIn === 'outage' || phase === 'outage'
        if (inOutage) outageWrites++
        for (const { type, id, value } of items) {
          const k = keyOf(company, type, id)
          last.set(k, value)
          if (inOutage) outageKeys.set(k, { company, type, id })
        }
      }
      return auth
    }

    const server = new FakeServer()
    const cfgA = { company: 'alice_outage', pn: '5511977770001', lid: '202000000000001' }
    const cfgB = { company: 'bob_outage', pn: '5511977770002', lid: '202000000000002' }
    const alice = new Account(B, recordWrites(await usePostgresAuthState(store, cfgA.company), cfgA.company), { ...cfgA, server })
    const bob = new Account(B, recordWrites(await usePostgresAuthState(store, cfgB.company), cfgB.company), { ...cfgB, server })

    // ---- before: sessions both ways and a group, in PostgreSQL ---------------------------
    assert.equal(await alice.uploadPreKeys(30), 30)
    assert.equal(await bob.uploadPreKeys(30), 30)
    assert.equal(await alice.send(bob, 'hi bob'), 'pkmsg')
    assert.equal(await bob.send(alice, 'hi alice'), 'msg')
    for (let i = 0; i < 5; i++) {
      await alice.send(bob, `before a->b ${i}`)
      await bob.send(alice, `before b->a ${i}`)
    }
    for (let i = 0; i < 3; i++) {
      await alice.sendGroup(GROUP, [bob], `before group ${i} from alice`)
      await bob.sendGroup(GROUP, [alice], `before group ${i} from bob`)
    }
    await alice.auth.saveCreds()
    await bob.auth.saveCreds()
    assert.equal(store.metrics().outage.down, false)

    // ---- the outage ------------------------------------------------------------------------
    const steps = [
      (i) => alice.send(bob, `outage ${i} a->b`),
      (i) => bob.send(alice, `outage ${i} b->a`),
      (i) => alice.sendGroup(GROUP, [bob], `outage ${i} group from alice`),
      (i) => bob.sendGroup(GROUP, [alice], `outage ${i} group from bob`)
    ]
    const seen = { downSamples: 0, maxPendingCalls: 0, maxPendingBytes: 0, lastError: null, attempts: 0 }
    let detectedAt = null
    poll = setInterval(() => {
      let o
      try { o = store.metrics().outage } catch { return }
      if (o.down) {
        if (detectedAt === null) detectedAt = performance.now()
        seen.downSamples++
        seen.lastError = o.last_error
        seen.attempts = Math.max(seen.attempts, o.reconnect_attempts)
      }
      seen.maxPendingCalls = Math.max(seen.maxPendingCalls, o.pending_calls)
      seen.maxPendingBytes = Math.max(seen.maxPendingBytes, o.pending_bytes)
    }, 10)

    phase = 'outage'
    db.stopServer()
    serverDown = true
    const stoppedAt = performance.now()
    const end = stoppedAt + OUTAGE_SECONDS * 1000
    let sent = 0
    let slowestStepMs = 0
    const counts = { oneToOne: 0, group: 0 }
    while (performance.now() < end) {
      const k = sent % steps.length
      const t0 = performance.now()
      try {
        await steps[k](sent)
      } catch (e) {
        throw new Error(`message ${sent} (step ${k}) failed ${Math.round(t0 - stoppedAt)} ms into the outage: ${e.stack || e}`)
      }
      slowestStepMs = Math.max(slowestStepMs, performance.now() - t0)
      if (k < 2) counts.oneToOne++
      else counts.group++
      sent++
      await sleep(STEP_MS)
    }
    const during = store.metrics().outage
    assert.ok(detectedAt !== null, 'metrics never showed the outage')
    assert.equal(during.down, true, 'still in outage while the server is stopped')
    assert.ok(seen.maxPendingCalls > 0, 'writes were kept as pending calls')
    assert.ok(outageKeys.size > 0, 'keys were written during the outage')
    assert.ok(counts.oneToOne >= 4 && counts.group >= 4, `messages sent during the outage: ${JSON.stringify(counts)}`)
    const detectMs = Math.round(detectedAt - stoppedAt)

    // ---- the server comes back -----------------------------------------------------------
    const startIssuedAt = performance.now()
    db.startServer() // returns once the server accepts connections (pg_ctl -w)
    serverDown = false
    const startedAt = performance.now()
    while (store.metrics().outage.down) {
      assert.ok(performance.now() - startedAt < 60000, 'the store did not recover within 60 s of the server start')
      await sleep(10)
    }
    const recoverMs = Math.round(performance.now() - startedAt)
    const recoverFromStartCommandMs = Math.round(performance.now() - startIssuedAt)
    phase = 'after'
    clearInterval(poll)
    const after = store.metrics().outage
    assert.equal(after.pending_calls, 0)
    assert.equal(after.pending_bytes, 0)
    assert.equal(after.outages, 1)

    // ---- every key written during the outage is in PostgreSQL, byte-exact (before any newer write)
    const lost = []
    const sessions = { [cfgA.company]: alice.auth.session, [cfgB.company]: bob.auth.session }
    for (const [k, { company, type, id }] of outageKeys) {
      const expected = last.get(k)
      const { rows } = await db.query(
        'SELECT value::text AS v FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = $3',
        [company, type, id])
      const inDb = rows.length ? JSON.parse(rows[0].v) : null
      try {
        assert.deepStrictEqual(inDb, expected)
      } catch {
        lost.push({ company, type, id, expected: expected === null ? 'deleted' : 'value', inDb: inDb === null ? 'absent' : 'other value' })
        continue
      }
      // and the store answers the same
      const got = await sessions[company].get(type, [id])
      assert.deepStrictEqual(canonical(got[id]), expected, `store answer for ${company}/${type}/${id}`)
    }
    const byType = {}
    for (const { type } of outageKeys.values()) byType[type] = (byType[type] || 0) + 1

    // Traffic goes on against the database again.
    for (let i = 0; i < steps.length; i++) await steps[i](`after ${i}`)
    await alice.auth.saveCreds()
    await bob.auth.saveCreds()
    const closed = await store.close()
    storeClosed = true
    assert.deepEqual(closed.unflushed, [], 'close had nothing left to flush')

    const summary = {
      outageSeconds: OUTAGE_SECONDS,
      detectMs,
      recoverMs,
      recoverFromStartCommandMs,
      outageMs: Math.round(startedAt - stoppedAt),
      messagesDuringOutage: counts,
      slowestStepMs: Math.round(slowestStepMs),
      outageWriteCalls: outageWrites,
      keysWrittenDuringOutage: outageKeys.size,
      keysByType: byType,
      maxPendingCalls: seen.maxPendingCalls,
      maxPendingBytes: seen.maxPendingBytes,
      reconnectAttempts: seen.attempts,
      lastError: seen.lastError,
      lost: lost.length
    }
    console.log('outage summary ' + JSON.stringify(summary))
    t.diagnostic(`detect ${detectMs} ms, recover ${recoverMs} ms, ${outageKeys.size} keys written during the outage, lost ${lost.length}`)
    assert.deepEqual(lost, [], 'every key written during the outage is in PostgreSQL, byte-exact')

    // ---- a new process restores both accounts from PostgreSQL alone -------------------------
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-outage-'))
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
    const serverFile = path.join(dir, 'server.json')
    fs.writeFileSync(serverFile, JSON.stringify(server, B.BufferJSON.replacer))
    const arg = JSON.stringify({ url: db.url, serverFile, accounts: [cfgA, cfgB], group: GROUP, rounds: 10 })
    const { stdout } = await promisify(execFile)(process.execPath,
      [path.join(__dirname, 'helpers', 'continue.js'), arg], { maxBuffer: 16 << 20, timeout: 180000 })
    const report = JSON.parse(stdout.trim().split('\n').pop())
    assert.equal(report.oneToOne, 20)
    assert.equal(report.group, 6)
    assert.deepEqual(Object.keys(report.types), ['msg'])
    assert.equal(report.lookups, 0, 'LID mappings were read from PostgreSQL')
    assert.equal(report.creds[cfgA.pn].registrationId, alice.creds.registrationId)
    assert.equal(report.creds[cfgB.pn].registrationId, bob.creds.registrationId)
    assert.deepEqual(report.closed.unflushed, [])
  })
