'use strict'
// Issue 11: many companies spread over three service processes, one killed: its companies are
// taken over by the others and real Baileys traffic continues on them, every message decrypted.
//
// Three real Node processes (test/helpers/takeover-worker.js) each open three companies through
// the addon with the lease on and a short expiry, each company a real Baileys Signal repository
// over usePostgresAuthState. Every company has two peers living in this process (in-memory
// Baileys accounts): one starts a session from the company's pre-key bundle, the company starts
// one from the other's bundle; messages go both ways, ciphertext crossing the process boundary,
// every one decrypted and compared. Then, while the other workers' traffic goes on, the third
// worker is SIGKILLed right after its companies acknowledged their messages (encrypt requests
// of each are in flight: never delivered). A survivor that tries too early is refused with
// EAUTHSTATE_LOCKED naming the dead holder's pid; once the lease expires the two survivors take
// the dead worker's companies over, and the peers send new messages with their EXISTING
// sessions: no pre-key bundle is fetched, no pre-key is consumed, every message is a `msg`, so
// the new owner decrypts with exactly the session state the killed process acknowledged and
// PostgreSQL kept; the new owner replies and the peers decrypt. Finally: no 'lost' event on the
// survivors, and the lease rows name the survivors as holders.
const test = require('node:test')
const assert = require('node:assert/strict')
const { fork } = require('node:child_process')
const path = require('node:path')
const { openStore } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys, FakeServer, Account, memoryAuth } = require('./helpers/signal.js')

const WORKER = path.join(__dirname, 'helpers', 'takeover-worker.js')
const LEASE = { leaseExpiryMs: 3000, leaseHeartbeatMs: 500 }
const WORKERS = 3
const PER_WORKER = 3
const SETUP_ROUNDS = 3 // round trips (4 messages: both peers, both ways) before the kill
const TAKEOVER_ROUNDS = 4 // round trips on each taken-over company
const WAIT_MS = 60000 // generous bound of every wait; a wait that runs out names what it waited for
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// `promise`, or a clear failure after `ms`.
function within (promise, ms, what) {
  let timer
  const limit = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms / 1000} s`)), ms)
  })
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer))
}

async function until (cond, what) {
  const deadline = Date.now() + WAIT_MS
  while (!cond()) {
    assert.ok(Date.now() < deadline, `${what}: not the case after ${WAIT_MS / 1000} s`)
    await sleep(50)
  }
}

// A service process driven over IPC; see the protocol in takeover-worker.js.
class Worker {
  constructor (name, cfg) {
    this.name = name
    this.proc = fork(WORKER, [JSON.stringify(cfg)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    this.pid = this.proc.pid
    this.pending = new Map()
    this.seq = 0
    this.exit = null
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        this.exit = { code, signal }
        for (const p of this.pending.values()) {
          p.reject(Object.assign(new Error(`${name} (pid ${this.pid}) exited (${signal || code}) before answering ${p.op}`), { code: 'EXITED' }))
        }
        this.pending.clear()
        resolve(this.exit)
      })
    })
    this.ready = new Promise((resolve, reject) => {
      this.proc.on('message', (m) => {
        if (m.ready) return resolve()
        const p = this.pending.get(m.id)
        if (!p) return
        this.pending.delete(m.id)
        if (m.error) {
          const e = new Error(`${name} (pid ${this.pid}) ${p.op}: ${m.error.message}`)
          e.code = m.error.code
          e.workerStack = m.error.stack
          p.reject(e)
        } else {
          p.resolve(m.result)
        }
      })
      this.exited.then((x) => reject(new Error(`${name} exited (${x.signal || x.code}) before it was ready`)))
    })
    this.ready.catch(() => {})
  }

  request (op, args) {
    return new Promise((resolve, reject) => {
      if (this.exit) return reject(Object.assign(new Error(`${this.name} has exited; cannot ${op}`), { code: 'EXITED' }))
      const id = ++this.seq
      this.pending.set(id, { resolve, reject, op })
      this.proc.send({ id, op, args }, (err) => {
        if (err && this.pending.delete(id)) reject(Object.assign(err, { code: 'EXITED' }))
      })
    })
  }

  kill () {
    if (!this.exit) this.proc.kill('SIGKILL')
  }
}

test('companies over three processes, one SIGKILLed mid-traffic: the others take its companies over and Baileys traffic continues on the stored sessions',
  { timeout: 180000 }, async (t) => {
    const workers = []
    let db
    let stop = false
    const killAll = () => { for (const w of workers) w.kill() }
    // Whatever happens, no worker outlives the test (they also exit when the IPC channel closes).
    process.once('exit', killAll)
    t.after(async () => {
      stop = true
      killAll()
      await Promise.all(workers.map((w) => w.exited))
      process.removeListener('exit', killAll)
      if (db) await db.close()
    })

    db = await freshDatabase()
    const setup = await openStore({ url: db.url, lease: false })
    await setup.migrate()
    await setup.close()
    const B = await loadBaileys()

    // The WhatsApp server stand-in: bundles and PN -> LID lookups, for the peers.
    const server = new FakeServer()
    const companies = []
    for (let i = 0; i < WORKERS * PER_WORKER; i++) {
      const n = String(i + 1).padStart(2, '0')
      const co = { company: `takeover_co_${n}`, pn: `55119777000${n}`, lid: `20177700000${n}`, home: Math.floor(i / PER_WORKER) }
      co.jid = `${co.pn}@s.whatsapp.net`
      server.register(co.pn, co.lid)
      // peerIn starts its session from the company's bundle, the company starts one from peerOut's.
      co.peerIn = new Account(B, memoryAuth(B), { pn: `55119666100${n}`, lid: `20166610000${n}`, server })
      co.peerOut = new Account(B, memoryAuth(B), { pn: `55119666200${n}`, lid: `20166620000${n}`, server })
      await co.peerOut.uploadPreKeys(5)
      companies.push(co)
    }
    const contacts = companies.flatMap((c) => [
      { pn: c.pn, lid: c.lid },
      { pn: c.peerIn.pnUser, lid: c.peerIn.lidUser },
      { pn: c.peerOut.pnUser, lid: c.peerOut.lidUser }
    ])
    for (let w = 0; w < WORKERS; w++) workers.push(new Worker(`worker ${w}`, { url: db.url, ...LEASE, contacts }))
    await within(Promise.all(workers.map((w) => w.ready)), WAIT_MS, 'the three workers starting')

    // Every message handed to a receiver, and every one it decrypted to the same text (also
    // per company: co.decrypted).
    const tally = { sent: 0, decrypted: 0 }
    const b64 = (b) => Buffer.from(b).toString('base64')
    async function toCompany (co, peer, text) {
      const { type, ciphertext } = await peer.repo.encryptMessage({ jid: co.jid, data: Buffer.from(text) })
      tally.sent++
      const got = await co.owner.request('decrypt', { company: co.company, jid: peer.jid, type, ciphertext: b64(ciphertext) })
      assert.equal(got.text, text, `${co.company} (${co.owner.name}) decrypted other text than ${peer.pnUser} sent`)
      tally.decrypted++
      co.decrypted = (co.decrypted || 0) + 1
      return type
    }
    async function fromCompany (co, peer, text) {
      const { type, ciphertext } = await co.owner.request('encrypt', { company: co.company, jid: peer.jid, text })
      tally.sent++
      const plain = await peer.repo.decryptMessage({ jid: co.jid, type, ciphertext: Buffer.from(ciphertext, 'base64') })
      assert.equal(Buffer.from(plain).toString(), text, `${peer.pnUser} decrypted other text than ${co.company} (${co.owner.name}) sent`)
      tally.decrypted++
      co.decrypted = (co.decrypted || 0) + 1
      return type
    }
    // 4 messages: both peers, both ways; the types of the 4.
    const roundTrip = async (co, tag) => [
      await toCompany(co, co.peerIn, `${tag}: ${co.peerIn.pnUser} -> ${co.company}`),
      await fromCompany(co, co.peerIn, `${tag}: ${co.company} -> ${co.peerIn.pnUser}`),
      await fromCompany(co, co.peerOut, `${tag}: ${co.company} -> ${co.peerOut.pnUser}`),
      await toCompany(co, co.peerOut, `${tag}: ${co.peerOut.pnUser} -> ${co.company}`)
    ]
    const ident = (co) => ({ company: co.company, pn: co.pn, lid: co.lid })
    const allMsg = (types, what) => assert.deepEqual(types, types.map(() => 'msg'), `${what}: every message on an established session is a msg`)

    await t.test('each worker opens its companies (lease on) and sets up real Signal sessions both ways', async () => {
      await within(Promise.all(companies.map(async (co) => {
        co.owner = workers[co.home]
        co.registrationId = (await co.owner.request('open', ident(co))).registrationId
        const { node } = await co.owner.request('upload', { company: co.company, count: 10 })
        assert.equal(server.upload(co.pn, JSON.parse(node, B.BufferJSON.reviver)), 10)
        await B.parseAndInjectE2ESessions(server.bundleNode(co.pn, co.jid), co.peerIn.repo)
        await co.owner.request('inject', {
          company: co.company,
          bundle: JSON.stringify(server.bundleNode(co.peerOut.pnUser, co.peerOut.jid), B.BufferJSON.replacer)
        })
        assert.deepEqual(await roundTrip(co, 'setup 0'), ['pkmsg', 'msg', 'pkmsg', 'msg'])
        for (let i = 1; i < SETUP_ROUNDS; i++) allMsg(await roundTrip(co, `setup ${i}`), co.company)
      })), WAIT_MS, 'session setup and first traffic of every company')
      const { rows } = await db.query('SELECT company_id, holder_pid FROM authstate_leases ORDER BY company_id')
      assert.deepEqual(rows.map((r) => [r.company_id, r.holder_pid]), companies.map((c) => [c.company, c.owner.pid]))
      assert.equal(tally.decrypted, companies.length * SETUP_ROUNDS * 4)
    })

    const victim = workers[WORKERS - 1]
    const survivors = workers.slice(0, WORKERS - 1)
    const victimCos = companies.filter((c) => c.owner === victim)
    const survivorCos = companies.filter((c) => c.owner !== victim)
    const ids = victimCos.map((c) => c.company)
    const preKeyCounts = async () => (await db.query(
      "SELECT company_id, count(*)::int AS n FROM whatsapp_keys WHERE key_type = 'pre-key' AND company_id = ANY($1) GROUP BY 1 ORDER BY 1", [ids])).rows

    // The survivors' companies keep messaging from here until the end.
    for (const co of survivorCos) co.rounds = 0
    const survivorTraffic = Promise.all(survivorCos.map(async (co) => {
      while (!stop) {
        allMsg(await roundTrip(co, `live ${co.rounds}`), co.company)
        co.rounds++
        await sleep(20)
      }
    }))
    survivorTraffic.catch(() => {}) // awaited below; a failure must not surface as unhandled first

    let preKeysBefore, tokensBefore
    await t.test(`worker ${WORKERS - 1} is SIGKILLed mid-traffic, after its companies acknowledged their messages`, async () => {
      await within(Promise.all(victimCos.map(async (co) => {
        allMsg(await roundTrip(co, 'before the kill'), co.company)
      })), WAIT_MS, 'the last acknowledged traffic of the doomed worker')
      preKeysBefore = await preKeyCounts()
      assert.deepEqual(preKeysBefore.map((r) => r.n), victimCos.map(() => 9), 'each company used one pre-key (peerIn\'s pkmsg)')
      const { rows } = await db.query('SELECT company_id, holder_pid, token FROM authstate_leases WHERE company_id = ANY($1) ORDER BY 1', [ids])
      assert.deepEqual(rows.map((r) => r.holder_pid), victimCos.map(() => victim.pid))
      tokensBefore = Object.fromEntries(rows.map((r) => [r.company_id, Number(r.token)]))
      // More messages of each company are being encrypted when the process dies: they are
      // never delivered (as if lost on the wire), whether or not their session steps reached
      // the store; the peers' sessions cope with the gap.
      const inFlight = victimCos.flatMap((co) => [co.peerIn, co.peerOut, co.peerIn].map((peer, i) =>
        co.owner.request('encrypt', { company: co.company, jid: peer.jid, text: `never delivered ${i}` })
          .then(() => 'answered', (e) => { if (e.code !== 'EXITED') throw e; return 'died with the process' })))
      const roundsAtKill = survivorCos.map((c) => c.rounds)
      await sleep(10) // let the worker start on them
      victim.kill()
      const exit = await within(victim.exited, WAIT_MS, 'the SIGKILLed worker exiting')
      assert.equal(exit.signal, 'SIGKILL')
      const outcomes = await Promise.all(inFlight)
      const answered = outcomes.filter((o) => o === 'answered').length
      t.diagnostic(`encrypts in flight at the kill: ${answered} answered (never delivered), ${outcomes.length - answered} died with the process`)
      await until(() => survivorCos.every((c, i) => c.rounds > roundsAtKill[i]),
        'the survivors\' traffic going on after the kill')
    })

    await t.test('a survivor trying too early is refused with LOCKED naming the dead holder', async () => {
      const co = victimCos[0]
      const heir = survivors[0]
      const { rows: [lease] } = await db.query('SELECT expires_at::text AS expires_at FROM authstate_leases WHERE company_id = $1', [co.company])
      const early = await heir.request('open', ident(co)).then((r) => ({ r }), (e) => ({ e }))
      const { rows: [{ live }] } = await db.query('SELECT now() < $1::timestamptz AS live', [lease.expires_at])
      if (early.e) {
        assert.equal(early.e.code, 'EAUTHSTATE_LOCKED', early.e.message)
        assert.match(early.e.message, new RegExp(`is held by another store: .*pid ${victim.pid}\\b`))
      } else {
        // Only a slow machine gets here: the lease must have expired before the attempt.
        assert.ok(!live, `${heir.name} acquired ${co.company} while the dead holder's lease was still live`)
        t.diagnostic(`the early attempt came after the ${LEASE.leaseExpiryMs} ms expiry (slow machine): it took the company over`)
        co.owner = heir
        co.registrationIdAfter = early.r.registrationId
      }
    })

    await t.test('after the expiry the survivors take the dead worker\'s companies over', async () => {
      let refused = 0
      await within(Promise.all(victimCos.map(async (co, i) => {
        const heir = survivors[i % survivors.length]
        while (co.owner === victim) {
          try {
            co.registrationIdAfter = (await heir.request('open', ident(co))).registrationId
            co.owner = heir
          } catch (e) {
            if (e.code !== 'EAUTHSTATE_LOCKED') throw e
            assert.match(e.message, new RegExp(`pid ${victim.pid}\\b`), 'LOCKED names the dead holder')
            refused++
            await sleep(200)
          }
        }
      })), WAIT_MS, `the survivors acquiring the dead worker's leases (expiry ${LEASE.leaseExpiryMs} ms)`)
      t.diagnostic(`refused while the dead holder's lease was live: ${refused}`)
      for (const co of victimCos) {
        assert.ok(survivors.includes(co.owner))
        assert.equal(co.registrationIdAfter, co.registrationId, `${co.company}: the creds read back`)
      }
    })

    await t.test('the peers continue on their existing sessions; the new owners decrypt every message and reply', async () => {
      const decrypted = () => victimCos.reduce((n, c) => n + c.decrypted, 0)
      const before = decrypted()
      await within(Promise.all(victimCos.map(async (co) => {
        for (const peer of [co.peerIn, co.peerOut]) {
          assert.equal(await co.owner.request('hasSession', { company: co.company, jid: peer.jid }), true,
            `${co.company}: the session with ${peer.pnUser} is read back from PostgreSQL`)
          assert.equal((await peer.repo.validateSession(co.jid)).exists, true)
        }
        for (let i = 0; i < TAKEOVER_ROUNDS; i++) {
          const tag = `after the takeover ${i}`
          allMsg([
            await toCompany(co, co.peerIn, `${tag}: ${co.peerIn.pnUser} -> ${co.company}`),
            await toCompany(co, co.peerOut, `${tag}: ${co.peerOut.pnUser} -> ${co.company}`),
            await fromCompany(co, co.peerIn, `${tag}: ${co.company} -> ${co.peerIn.pnUser}`),
            await fromCompany(co, co.peerOut, `${tag}: ${co.company} -> ${co.peerOut.pnUser}`)
          ], co.company)
        }
      })), WAIT_MS, 'the traffic on the taken-over companies')
      assert.equal(decrypted() - before, victimCos.length * TAKEOVER_ROUNDS * 4)
      // No session was set up again: no pre-key of the taken-over companies was used.
      assert.deepEqual(await preKeyCounts(), preKeysBefore)
    })

    await t.test('no lease lost by the survivors; the lease rows name them; all traffic decrypted', async () => {
      const at = survivorCos.map((c) => c.rounds)
      await until(() => survivorCos.every((c, i) => c.rounds >= at[i] + 2), 'the survivors\' own traffic going on')
      stop = true
      await within(survivorTraffic, WAIT_MS, 'the survivors\' traffic stopping')

      const status = new Map()
      for (const w of survivors) status.set(w, await w.request('status'))
      for (const [w, s] of status) {
        assert.deepEqual(s.lost, [], `${w.name} heard no 'lost'`)
        assert.equal(s.leases.lost, 0)
        assert.equal(s.leases.held, companies.filter((c) => c.owner === w).length, `${w.name} holds its own and its taken-over companies`)
        assert.ok(s.leases.heartbeats > 0)
        // The taken-over companies found their PN -> LID mappings in PostgreSQL.
        for (const co of victimCos.filter((c) => c.owner === w)) assert.equal(s.lookups[co.company], 0, co.company)
      }
      const { rows } = await db.query(
        'SELECT company_id, holder_pid, holder_instance, token, expires_at > now() AS live, released_at FROM authstate_leases ORDER BY company_id')
      assert.deepEqual(rows.map((r) => r.company_id), companies.map((c) => c.company))
      for (const [i, r] of rows.entries()) {
        const co = companies[i]
        assert.equal(r.holder_pid, co.owner.pid, `${co.company} is held by ${co.owner.name}`)
        assert.equal(r.holder_instance, status.get(co.owner).leases.instance)
        assert.equal(r.live, true)
        assert.equal(r.released_at, null)
        if (victimCos.includes(co)) assert.ok(Number(r.token) > tokensBefore[co.company], `${co.company}: the takeover moved the token`)
      }
      assert.equal(tally.decrypted, tally.sent, 'every message handed over was decrypted')
      const survivorMessages = survivorCos.reduce((n, c) => n + c.rounds * 4, 0)
      t.diagnostic(`messages decrypted: ${tally.decrypted} (survivors' own after setup: ${survivorMessages})`)

      for (const w of survivors) await w.request('close')
      for (const w of survivors) assert.deepEqual(await within(w.exited, WAIT_MS, `${w.name} closing`), { code: 0, signal: null })
    })
  })
