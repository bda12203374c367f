#!/usr/bin/env node
'use strict'
// Side-by-side benchmark, one run: the addon vs. a reference JS implementation of the old
// module (bench/reference-pg.js) vs. Baileys' useMultiFileAuthState in a temp dir.
//   npm run bench                       (builds the release addon first; loopback)
//   node bench/run.js                   (uses the addon as last built: node/authstate.<platform>.node; loopback)
//   node bench/run.js --rtt-ms 20       (through the delay proxy: 10 ms each way)
//   node bench/run.js --rtt-ms 50       (25 ms each way)
// DATABASE_URL is used when set, otherwise `authstate tempdb` starts a throwaway cluster.
// With --rtt-ms (or BENCH_RTT_MS) the addon and the reference module reach PostgreSQL through
// the delay proxy (`examples/delay_proxy.rs`, src/delay_proxy.rs; built with cargo on first
// use); set-up and migrations go direct.
// Options (env): BENCH_MESSAGES_PER_ACCOUNT (40), BENCH_ACCOUNTS (50), BENCH_REPS (8),
// BENCH_SETTLE_MS (1000: idle time between opening the accounts and their messages),
// BENCH_WARMUP_MESSAGES (20 per account, untimed, on accounts of their own, before the timed run),
// BENCH_MIN_TIMED_MS (1000: the messaging workload is timed in whole rounds until they add up to
// this; each round on accounts of its own), BENCH_CYCLES (3: the implementations take turns in
// this many cycles, each with its share of BENCH_MIN_TIMED_MS),
// BENCH_JSON (a file to write the results to, as JSON), BENCH_IMPLS (e.g. `addon`: only these),
// BENCH_ADDON_OPTIONS (JSON options for the addon's store, see below).
// CPU columns: seconds of CPU per 1,000 units (messages, keys or gets) of the Node process
// (process.cpuUsage) and of PostgreSQL (the postmaster and all its children, read from
// /proc/<pid>/stat; needs the server on this host, else "-").
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { spawn, spawnSync } = require('node:child_process')
const { setTimeout: sleep } = require('node:timers/promises')
const { Pool, Client } = require('pg')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase, targetDir, ROOT } = require('../test/helpers/db.js')
const { loadBaileys } = require('../test/helpers/signal.js')
const { makeReference } = require('./reference-pg.js')

const ACCOUNTS = Number(process.env.BENCH_ACCOUNTS || 50)
const PER_ACCOUNT = Number(process.env.BENCH_MESSAGES_PER_ACCOUNT || 40)
const REPS = Number(process.env.BENCH_REPS || 8)
// Wait after the accounts open, before their messages (see the messaging workload).
const SETTLE_MS = Number(process.env.BENCH_SETTLE_MS ?? 1000)
// Untimed messages per account before the timed ones, on other accounts (JIT warm-up).
const WARMUP = Number(process.env.BENCH_WARMUP_MESSAGES ?? 20)
// The messaging workload is timed in rounds (each the whole workload, on accounts of its own)
// until they add up to this much messaging (a round is whole, and at most MAX_ROUNDS_PER_CYCLE a
// cycle: the in-memory ceiling's ~50 ms rounds add up to 0.3-0.6 s). One round of the addon lasted 0.2-0.35 s on
// loopback (four to seven of journal mode's 50 ms flush cycles) and the reference's ~1.7 s: so
// every figure spans at least this much traffic, not a fast implementation's few flush cycles.
const MIN_TIMED_MS = Number(process.env.BENCH_MIN_TIMED_MS ?? 1000)
// The implementations take turns in this many cycles: this machine's speed drifts 2-5x within
// minutes, and with each implementation's rounds run back to back the same build's journal /
// reference ratio read 6.5x, 4.2x and 14.7x in three runs. Taking turns, every implementation
// meets the same minutes of the machine. In each cycle an implementation runs rounds until they
// add up to MIN_TIMED_MS / CYCLES (at least one, at most MAX_ROUNDS_PER_CYCLE).
const CYCLES = Math.max(1, Number(process.env.BENCH_CYCLES ?? 3))
const MAX_ROUNDS_PER_CYCLE = 3
// BENCH_ADDON_OPTIONS: JSON merged into the addon's openStore options, e.g.
// '{"durability":"journal","journalPath":"/tmp/j"}' or '{"pipelineDepth":1}'.
const ADDON_OPTIONS = JSON.parse(process.env.BENCH_ADDON_OPTIONS || '{}')
const FIXTURES = path.join(__dirname, '..', '..', 'tests', 'fixtures', 'baileys')
const RTT_MS = (() => {
  const i = process.argv.indexOf('--rtt-ms')
  const v = i >= 0 ? process.argv[i + 1] : process.env.BENCH_RTT_MS
  const n = Number(v || 0)
  if (!Number.isFinite(n) || n < 0) throw new Error(`--rtt-ms: not a number of milliseconds: ${v}`)
  return n
})()

// --- the delay proxy -----------------------------------------------------------------------

function proxyBinary () {
  const found = ['release', 'debug'].map((p) => path.join(targetDir(), p, 'examples', 'delay_proxy'))
    .filter((f) => fs.existsSync(f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)
  if (found.length) return found[0]
  const r = spawnSync('cargo', ['build', '--release', '--example', 'delay_proxy'], { cwd: ROOT, stdio: 'inherit' })
  if (r.status !== 0) throw new Error('cannot build the delay proxy (cargo build --release --example delay_proxy)')
  return path.join(targetDir(), 'release', 'examples', 'delay_proxy')
}

const isUrl = (url) => /^postgres(ql)?:\/\//.test(url)

// host and port of a postgres:// URL or a libpq key=value string
function hostPort (url) {
  if (isUrl(url)) {
    const u = new URL(url)
    return { host: u.hostname || '127.0.0.1', port: Number(u.port || 5432) }
  }
  const kv = (k) => (url.match(new RegExp(`\\b${k}=(\\S+)`)) || [])[1]
  return { host: kv('host') || '127.0.0.1', port: Number(kv('port') || 5432) }
}

function withHostPort (url, host, port) {
  if (isUrl(url)) {
    const u = new URL(url)
    u.hostname = host
    u.port = String(port)
    return u.toString()
  }
  return url.replace(/\bhost=\S+/, '').replace(/\bport=\S+/, '') + ` host=${host} port=${port}`
}

// Starts the proxy (delay each way = rtt / 2); resolves to { url, stop() }.
function startProxy (url, rttMs) {
  const { host, port } = hostPort(url)
  if (host.startsWith('/')) throw new Error('the delay proxy needs a TCP database URL, not a unix socket')
  const bin = proxyBinary()
  const child = spawn(bin, ['--upstream', `${host}:${port}`, '--delay-ms', String(Math.round(rttMs / 2))],
    { stdio: ['pipe', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stdout })
    child.on('error', reject)
    child.on('exit', (code) => reject(new Error(`delay proxy exited with ${code}`)))
    rl.once('line', (line) => {
      const { listen } = JSON.parse(line)
      const at = listen.lastIndexOf(':')
      resolve({
        url: withHostPort(url, listen.slice(0, at), Number(listen.slice(at + 1))),
        stop: () => new Promise((resolve) => { child.once('exit', resolve); child.stdin.end() })
      })
    })
  })
}

// --- CPU of PostgreSQL -----------------------------------------------------------------------

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100

// Fields of /proc/<pid>/stat after the command name: [0] = field 3 (state), [1] = ppid.
function statFields (pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return s.slice(s.lastIndexOf(')') + 2).split(' ')
}

// The postmaster's pid (the parent of our backend), or null when it is not on this host.
async function postmasterPid (url) {
  const c = new Client({ connectionString: url })
  await c.connect()
  try {
    const { rows } = await c.query('SELECT pg_backend_pid() AS pid')
    return Number(statFields(rows[0].pid)[1])
  } catch {
    return null
  } finally {
    await c.end()
  }
}

// CPU seconds of the postmaster, its ended children (cutime + cstime) and its live children.
function pgCpuSeconds (pm) {
  if (!pm) return NaN
  const f = statFields(pm)
  let ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const c = statFields(d)
      if (Number(c[1]) === pm) ticks += Number(c[11]) + Number(c[12])
    } catch {} // ended meanwhile
  }
  return ticks / CLK_TCK
}

// CPU of both processes over a phase: const m = meter(pm); ...; m.stop() -> { node, pg } s
function meter (pm) {
  const n0 = process.cpuUsage()
  const p0 = pgCpuSeconds(pm)
  return {
    stop () {
      const n = process.cpuUsage(n0)
      return { node: (n.user + n.system) / 1e6, pg: pgCpuSeconds(pm) - p0 }
    }
  }
}

const now = () => performance.now()

// Before each timed cold get (of every implementation, and of the bare query): a full
// collection, then a pause for V8's background sweeping. Without it the garbage of the earlier
// workloads (~80 MB after five messaging runs) made V8 scavenge in the middle of ~4 of 9 timed
// gets, 4-13 ms each (--trace-gc), and a get's figure depended on which workloads ran before it
// (the addon's cold get alone, BENCH_IMPLS=addon: 1.0-1.4x the bare query; in the full run:
// 1.4-1.8x). A service's first reads after a restart meet a young heap, not that debt.
const collectGarbage = (() => {
  if (typeof globalThis.gc !== 'function') {
    require('node:v8').setFlagsFromString('--expose-gc')
    return require('node:vm').runInNewContext('gc')
  }
  return globalThis.gc
})()
async function settleHeap () {
  collectGarbage()
  await sleep(20)
}
// `n` gets of one session each (ids[0..10] in turn), then more until `until` (a now() time);
// their latencies. A function of its own, used for the warm-up and the timed run alike: V8
// optimizes it on its own, where the loops in main() ran in baseline code (V8's one attempt
// to optimize main was aborted) and added their own microseconds to every get.
async function cachedGets (keys, ids, n, until) {
  const lat = []
  for (let r = 0; r < n || now() < until; r++) {
    const id = ids[r % 10]
    const a = now()
    const got = await keys.get('session', [id])
    lat.push(now() - a)
    if (!got[id]) throw new Error('cached get missed')
  }
  return lat
}

function pct (xs, p) {
  if (!xs.length) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]
}

async function main () {
  const B = await loadBaileys()
  const db = await freshDatabase()
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-bench-'))
  const results = [] // {workload, impl, rate, unit, p50, p99, cpu: {node, pg} s per 1,000 units}
  let proxy
  try {
    const setupStore = await openStore({ url: db.url })
    await setupStore.migrate()
    await setupStore.close()
    const pm = await postmasterPid(db.url)
    if (RTT_MS > 0) proxy = await startProxy(db.url, RTT_MS)
    const url = proxy ? proxy.url : db.url
    const per1k = (m, units) => ({ node: (m.node * 1000) / units, pg: (m.pg * 1000) / units })

    const fixture = (f) => JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8')).canonical
    const sessionValue = JSON.parse(JSON.stringify(fixture('session-2.json')), B.BufferJSON.reviver)
    const senderKeyValue = JSON.parse(JSON.stringify(fixture('sender-key-1.json')), B.BufferJSON.reviver)
    const preKeys = {}
    for (let i = 1; i <= 812; i++) preKeys[i] = B.Curve.generateKeyPair()

    const pool = new Pool({ connectionString: url, max: 20 })
    // An idle client's connection ended by the server (e.g. the cluster stopping after a failure)
    // must not crash the run and hide the error that stopped it.
    pool.on('error', (e) => console.error(`reference pool: idle client error: ${e.message}`))
    const impls = [
      {
        name: 'addon',
        readsPostgres: true,
        async init () { this.store = await openStore({ url, ...ADDON_OPTIONS }) },
        open (c) { return usePostgresAuthState(this.store, c) },
        async coldGet (c, type, ids) {
          // A second store with an empty cache; it only reads, and the bench's main store holds
          // the company's lease, so this one takes none.
          const store = await openStore({ url, lease: false })
          const auth = await usePostgresAuthState(store, c)
          const t0 = now()
          const got = await auth.state.keys.get(type, ids)
          const dt = now() - t0
          await store.close()
          return { got, dt }
        },
        async done () { await this.store.close() }
      },
      {
        // The same addon with durability 'journal': a set resolves once fsynced to a local
        // journal; a background flusher commits, coalescing rewrites of a key.
        name: 'addon-journal',
        writesOnly: true,
        async init () {
          this.store = await openStore({ url, ...ADDON_OPTIONS, durability: 'journal', journalPath: path.join(tmp, 'journal') })
        },
        open (c) { return usePostgresAuthState(this.store, c) },
        // Until every acknowledged write is in PostgreSQL (so its CPU is counted too).
        async drain () {
          for (;;) {
            const o = this.store.metrics().outage
            if (!o || o.pending_calls === 0) return
            await sleep(5)
          }
        },
        async done () { await this.store.close() }
      },
      {
        // Not a store: Baileys' calls answered from a Map of references, nothing serialized or
        // kept. Its rows are the ceiling of this benchmark on this machine (the load generator's
        // own JavaScript), to read the others' figures against.
        name: 'in-memory ceiling',
        writesOnly: true,
        async init () { this.maps = new Map() },
        open (c) {
          if (!this.maps.has(c)) this.maps.set(c, new Map())
          const m = this.maps.get(c)
          const keys = {
            async get (type, ids) {
              const out = {}
              for (const id of ids) {
                const v = m.get(`${type}/${id}`)
                if (v !== undefined) out[id] = v
              }
              return out
            },
            async set (data) {
              for (const type of Object.keys(data)) {
                for (const [id, v] of Object.entries(data[type] || {})) {
                  if (v == null) m.delete(`${type}/${id}`)
                  else m.set(`${type}/${id}`, v)
                }
              }
            }
          }
          return { state: { creds: {}, keys }, saveCreds: async () => {} }
        },
        async done () {}
      },
      {
        name: 'reference-pg',
        readsPostgres: true,
        async init () { this.use = makeReference(pool, B) },
        open (c) { return this.use(c) },
        // Like the addon's: a new pool (a process after a restart), the creds loaded, then the
        // get on that pool's connection. The shared pool's connections have run every statement
        // already, which a restarted service's have not.
        async coldGet (c, type, ids) {
          const fresh = new Pool({ connectionString: url, max: 20 })
          fresh.on('error', (e) => console.error(`reference cold pool: ${e.message}`))
          try {
            const auth = await makeReference(fresh, B)(c)
            const t0 = now()
            const got = await auth.state.keys.get(type, ids)
            return { got, dt: now() - t0 }
          } finally {
            await fresh.end()
          }
        },
        async done () {}
      },
      {
        name: 'multi-file',
        async init () {},
        open (c) { return B.useMultiFileAuthState(path.join(tmp, c)) },
        async coldGet (c, type, ids) {
          const auth = await this.open(c)
          const t0 = now()
          const got = await auth.state.keys.get(type, ids)
          return { got, dt: now() - t0 }
        },
        async done () {}
      }
    ]
    // BENCH_IMPLS=addon,reference-pg runs only those (e.g. to profile one of them).
    const only = (process.env.BENCH_IMPLS || '').split(',').filter(Boolean)
    const unknown = only.filter((n) => !impls.some((i) => i.name === n))
    if (unknown.length) throw new Error(`BENCH_IMPLS: unknown ${unknown.join(', ')} (known: ${impls.map((i) => i.name).join(', ')})`)
    if (only.length) impls.splice(0, impls.length, ...impls.filter((i) => only.includes(i.name)))
    for (const impl of impls) await impl.init()

    // 1. the 812-pre-key set (first connect)
    for (const impl of impls) {
      const lat = []
      let total = 0
      const m = meter(pm)
      for (let r = 0; r < REPS; r++) {
        const auth = await impl.open(`pk_${impl.name.replace(/\W/g, '')}_${r}`)
        const t0 = now()
        await auth.state.keys.set({ 'pre-key': preKeys })
        const dt = now() - t0
        lat.push(dt)
        total += dt
      }
      const cpu = per1k(m.stop(), 812 * REPS)
      results.push({ workload: '812-pre-key set', impl: impl.name, rate: (812 * REPS) / (total / 1000), unit: 'keys/s', p50: pct(lat, 50), p99: pct(lat, 99), cpu })
    }

    // 2. 50 accounts exchanging messages (storage traffic of Signal messaging)
    const addr = (i) => `55119${String(i).padStart(8, '0')}_1.0`
    const groupOf = (i) => `1203630${String(i % 10).padStart(11, '0')}@g.us`
    const membersOf = (g) => [...Array(ACCOUNTS).keys()].filter((i) => groupOf(i) === g)
    // Each account sends `perAccount` messages, one after another; the accounts at once.
    const exchange = async (accts, perAccount, lat, setLat) => {
      const timedSet = async (keys, data) => {
        const s0 = now()
        await keys.set(data)
        setLat.push(now() - s0)
      }
      const session1 = async (keys, peer) => {
        const { [peer]: s } = await keys.get('session', [peer])
        await timedSet(keys, { session: { [peer]: s || sessionValue } })
      }
      await Promise.all(accts.map(async (keys, i) => {
        for (let k = 0; k < perAccount; k++) {
          const m0 = now()
          if (k % 5 === 4) {
            const g = groupOf(i)
            const name = `${g}::${addr(i)}`
            const { [name]: sk } = await keys.get('sender-key', [name])
            await timedSet(keys, { 'sender-key': { [name]: sk || senderKeyValue } })
            const members = membersOf(g).filter((j) => j !== i)
            const memory = {}
            for (const j of members) memory[`55119${String(j).padStart(8, '0')}@s.whatsapp.net`] = true
            await timedSet(keys, { 'sender-key-memory': { [g]: memory } })
            for (const j of members) {
              const { [name]: rsk } = await accts[j].get('sender-key', [name])
              await timedSet(accts[j], { 'sender-key': { [name]: rsk || senderKeyValue } })
            }
          } else {
            const j = (i + 1 + k) % ACCOUNTS
            await session1(keys, addr(j))
            await session1(accts[j], addr(i))
          }
          lat.push(now() - m0)
        }
      }))
    }
    // Each implementation's timed messaging: its latencies, rounds and CPU, filled round by round.
    const messaging = impls.map((impl) => ({
      impl,
      tag: impl.name.replace(/\W/g, ''),
      lat: [],
      setLat: [], // each set of the messages alone: what pipelining is about
      rounds: [], // { messages, ms } of each round, for BENCH_JSON
      total: 0,
      drained: 0,
      cpuUsed: { node: 0, pg: 0 }
    }))
    const openAccounts = async (run, prefix, keep) => {
      const accts = []
      for (let i = 0; i < ACCOUNTS; i++) {
        const auth = await run.impl.open(`${prefix}_${run.tag}_${i}`)
        if (keep && auth.session) keep.push(auth.session)
        accts.push(auth.state.keys)
      }
      return accts
    }
    // Warm-up, not timed, on accounts of its own: the same traffic, so the JIT has compiled
    // both the load generator's and the implementation's paths before the timed run (without
    // it, the addon's runs of ~0.3 s were mostly compilation on V8's helper threads).
    for (const run of messaging.filter(() => WARMUP > 0)) {
      await exchange(await openAccounts(run, 'warm'), WARMUP, [], [])
      if (run.impl.drain) await run.impl.drain()
    }
    // One timed round: the whole workload on accounts of its own.
    const timedRound = async (run) => {
      const { impl } = run
      const sessions = [] // the addon's sessions of this round's accounts
      const accts = await openAccounts(run, `msg${run.rounds.length}`, sessions)
      // Whether every timed account's directory is loaded: memory then answers a read of a key
      // never stored (the synchronous cached read gives '{}' instead of null). The store's count
      // of loaded directories is no test: it drops when earlier phases' sessions are collected.
      const unloaded = () => sessions.filter((s) => s._native.getCached('pre-key', ['bench-never-stored']) === null).length
      // The accounts are connected and idle for a moment before traffic starts, as in a running
      // service (the same wait for every implementation): the addon loads each company's key
      // directory 500 ms after its session opens (src/store.rs, DIRECTORY_LOAD_DELAY), and with
      // it answers reads of keys never stored (most reads here: every pair's first session)
      // without a query. Without the wait the run measured the first ~0.5 s after a restart.
      await sleep(SETTLE_MS)
      // On a slow moment of this machine the 50 loads can outlast the settle time; a connected
      // service has long loaded them, so the run waits for them (up to 5 s more) rather than
      // measure a half-loaded store. With BENCH_SETTLE_MS=0 it does not wait (a restart).
      for (let waited = 0; SETTLE_MS > 0 && unloaded() > 0 && waited < 5000; waited += 50) {
        await sleep(50)
      }
      if (SETTLE_MS > 0 && unloaded() > 0) {
        console.error(`${impl.name}: ${unloaded()} of ${ACCOUNTS} key directories not loaded after ${SETTLE_MS + 5000} ms; reads of absent keys query PostgreSQL`)
      }
      const m = meter(pm)
      const before = run.lat.length
      const t0 = now()
      await exchange(accts, PER_ACCOUNT, run.lat, run.setLat)
      const ms = now() - t0
      // Journal mode: the CPU figures include flushing everything to PostgreSQL.
      if (impl.drain) await impl.drain()
      run.drained += now() - t0
      run.total += ms
      const used = m.stop()
      run.cpuUsed = { node: run.cpuUsed.node + used.node, pg: run.cpuUsed.pg + used.pg }
      run.rounds.push({ messages: run.lat.length - before, ms })
    }
    // Timed rounds, the implementations taking turns for CYCLES cycles; in each, rounds of one
    // implementation until they add up to its share of BENCH_MIN_TIMED_MS (see CYCLES).
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      for (const run of messaging) {
        const until = run.total + MIN_TIMED_MS / CYCLES
        for (let r = 0; r < MAX_ROUNDS_PER_CYCLE && (r === 0 || run.total < until); r++) await timedRound(run)
      }
    }
    for (const run of messaging) {
      const { impl, lat, setLat, rounds, total, drained } = run
      const messages = lat.length
      const cpu = per1k(run.cpuUsed, messages)
      results.push({ workload: `${ACCOUNTS} accounts messaging`, impl: impl.name, rate: messages / (total / 1000), unit: 'msg/s', p50: pct(lat, 50), p99: pct(lat, 99), cpu, rounds })
      const noCpu = { node: NaN, pg: NaN }
      results.push({ workload: '  its sets alone', impl: impl.name, rate: setLat.length / (total / 1000), unit: 'sets/s', p50: pct(setLat, 50), p99: pct(setLat, 99), cpu: noCpu })
      if (impl.drain) {
        results.push({ workload: '  until all in PostgreSQL', impl: impl.name, rate: messages / (drained / 1000), unit: 'msg/s', p50: NaN, p99: NaN, cpu: noCpu })
      }
    }

    // 3. cold get of 1,000 keys, 4. cached get (reads do not depend on the durability mode).
    // The floor for a cold get: the same query, its values as text through node-postgres,
    // nothing parsed. It runs right after each cold get of the first implementation that reads
    // PostgreSQL (so both meet the same machine: its speed drifts within minutes), on that one's
    // company; without such an implementation (e.g. BENCH_IMPLS=addon-journal) there is none.
    const COLD_REPS = Math.max(9, REPS)
    const bare = { lat: [], cpu: { node: 0, pg: 0 } }
    const bareOnce = async (company, ids) => {
      const c = new Client({ connectionString: url })
      await c.connect()
      await settleHeap()
      const m = meter(pm)
      const t0 = now()
      const { rows } = await c.query({
        text: 'SELECT key_id, value::jsonb::text AS v FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3::text[])',
        values: [company, 'session', ids]
      })
      bare.lat.push(now() - t0)
      const used = m.stop()
      bare.cpu.node += used.node
      bare.cpu.pg += used.pg
      await c.end()
      if (rows.length !== 1000) throw new Error(`bare query returned ${rows.length} rows`)
    }
    const firstReader = impls.find((i) => i.readsPostgres && !i.writesOnly)
    for (const impl of impls.filter((i) => !i.writesOnly)) {
      const tag = impl.name.replace(/\W/g, '')
      const company = `cold_${tag}`
      const auth = await impl.open(company)
      const ids = []
      const data = {}
      for (let i = 0; i < 1000; i++) {
        const id = `55118${String(i).padStart(8, '0')}_1.0`
        ids.push(id)
        data[id] = sessionValue
      }
      await auth.state.keys.set({ session: data })
      const lat = []
      let cpuSum = { node: 0, pg: 0 }
      for (let r = 0; r < COLD_REPS; r++) {
        await settleHeap()
        const m = meter(pm) // includes opening a store per cold get (addon)
        const { got, dt } = await impl.coldGet(company, 'session', ids)
        const used = m.stop()
        cpuSum = { node: cpuSum.node + used.node, pg: cpuSum.pg + used.pg }
        if (Object.keys(got).length !== 1000) throw new Error(`${impl.name}: cold get returned ${Object.keys(got).length}`)
        lat.push(dt)
        if (impl === firstReader) await bareOnce(company, ids)
      }
      const sum = lat.reduce((a, b) => a + b, 0)
      const cpu = per1k(cpuSum, 1000 * lat.length)
      results.push({ workload: 'cold get of 1,000 keys', impl: impl.name, rate: (1000 * lat.length) / (sum / 1000), unit: 'keys/s', p50: pct(lat, 50), p99: pct(lat, 99), cpu })
      if (impl === firstReader) {
        const bsum = bare.lat.reduce((a, b) => a + b, 0)
        results.push({ workload: 'cold get of 1,000 keys', impl: 'bare query (text)', rate: (1000 * bare.lat.length) / (bsum / 1000), unit: 'keys/s', p50: pct(bare.lat, 50), p99: pct(bare.lat, 99), cpu: per1k(bare.cpu, 1000 * bare.lat.length) })
      }

      const hot = await impl.open(company)
      // Warm-up, not timed: at least 1,000 gets and half a second (the JIT compiling both
      // sides' paths; in this busy process 1,000 gets alone ended before V8 had optimized the
      // addon's get, so part of the timed loop ran unoptimized code).
      await cachedGets(hot.state.keys, ids, 1000, now() + 500)
      const n = 3000
      const m2 = meter(pm)
      const t0 = now()
      const lat2 = await cachedGets(hot.state.keys, ids, n, 0)
      const total = now() - t0
      const cpu2 = per1k(m2.stop(), n)
      results.push({ workload: 'cached get (1 session)', impl: impl.name, rate: n / (total / 1000), unit: 'gets/s', p50: pct(lat2, 50), p99: pct(lat2, 99), cpu: cpu2 })
    }
    for (const impl of impls) await impl.done()
    await pool.end()
  } finally {
    if (proxy) await proxy.stop()
    fs.rmSync(tmp, { recursive: true, force: true })
    await db.close()
  }

  // table
  const rows = [['workload', 'implementation', 'throughput', 'p50 ms', 'p99 ms', 'addon vs this', 'this vs reference', 'node CPU s/1k', 'PG CPU s/1k']]
  const cpuText = (x) => Number.isFinite(x) ? x.toFixed(3) : '-'
  // Milliseconds; under 0.1 ms to the tenth of a microsecond (a cached get takes a few).
  const msText = (x) => !Number.isFinite(x) ? '-' : x < 0.1 ? x.toFixed(4) : x.toFixed(3)
  for (const r of results) {
    const addon = results.find((x) => x.workload === r.workload && x.impl === 'addon')
    // the journal's "until all in PostgreSQL" row compares with the reference's messaging rate
    const refWorkload = r.workload === '  until all in PostgreSQL' ? `${ACCOUNTS} accounts messaging` : r.workload
    const ref = results.find((x) => x.workload === refWorkload && x.impl === 'reference-pg')
    rows.push([r.workload, r.impl, `${r.rate.toFixed(0)} ${r.unit}`, msText(r.p50), msText(r.p99),
      r.impl === 'addon' || !addon ? '-' : `${(addon.rate / r.rate).toFixed(2)}x`,
      r.impl === 'reference-pg' || !ref ? '-' : `${(r.rate / ref.rate).toFixed(2)}x`,
      cpuText(r.cpu.node), cpuText(r.cpu.pg)])
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)))
  const line = (r) => '| ' + r.map((x, c) => x.padEnd(w[c])).join(' | ') + ' |'
  console.log(line(rows[0]))
  console.log('|' + w.map((n) => '-'.repeat(n + 2)).join('|') + '|')
  for (const r of rows.slice(1)) console.log(line(r))
  console.log(`\n${ACCOUNTS} accounts x ${PER_ACCOUNT} messages (every 5th a group message to a ${ACCOUNTS / 10}-member group); ` +
    `${REPS} reps of the 812-key set; node ${process.version}, ${os.cpus().length} cores; ` +
    (RTT_MS > 0 ? `through the delay proxy, ${RTT_MS} ms round trip` : 'loopback (no proxy)') +
    `; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`)
  const rounds = results.filter((r) => r.rounds)
    .map((r) => `${r.impl} ${r.rounds.length} (${r.rounds.reduce((sum, x) => sum + x.ms, 0).toFixed(0)} ms)`)
  console.log(`Messaging timed in rounds of the whole workload, the implementations taking turns in ${CYCLES} cycles ` +
    `(rounds until ${MIN_TIMED_MS} ms, at most ${MAX_ROUNDS_PER_CYCLE} a cycle): ${rounds.join(', ')}`)
  if (process.env.BENCH_JSON) fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify({ rttMs: RTT_MS, results }, null, 2))
}

main().catch((e) => { console.error(e); process.exit(1) })
