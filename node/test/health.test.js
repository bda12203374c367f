'use strict'
// store.health(), store.on('alert'), store.prometheus() and `authstate health`, each driven by a
// real cause: expired rows inserted by SQL, a table lock held by another SQL session (slow
// queries, and a pool exhausted by calls blocked on it), PostgreSQL stopped, and a Node service
// in another process whose live figures the command-line tool shows.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const readline = require('node:readline')
const { setTimeout: sleep } = require('node:timers/promises')
const { Client } = require('pg')
const { openStore, PROMETHEUS_CONTENT_TYPE } = require('..')
const { freshDatabase, authstateBinary } = require('./helpers/db.js')

// Background checks out of the way: the tests drive every evaluation.
const quiet = { sampleIntervalMs: 3600000, dbCheckIntervalMs: 3600000, publishIntervalMs: 0 }
const check = (r, name) => {
  const c = r.checks.find((c) => c.name === name)
  assert.ok(c, `no ${name} check in ${JSON.stringify(r)}`)
  return c
}
const ofKind = (events, kind) => events.filter((e) => e.kind === kind).map((e) => [e.previous, e.status])

// Polls until `cond` holds; what it waits for is driven by the test, not by time.
async function until (what, cond) {
  const started = Date.now()
  while (!(await cond())) {
    if (Date.now() - started > 60000) throw new Error(`gave up waiting for ${what}`)
    await sleep(20)
  }
}

const insertExpired = (db, company, n, age) => db.query(
  `INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at)
   SELECT $1, 'pre-key', 'x' || g || '-' || md5(random()::text), '{}'::jsonb, now() - $3::interval
   FROM generate_series(1, $2::int) g`, [company, n, age])

test('expired keys: age histogram, alerts, cooldowns', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const store = await openStore({ url: db.url, health: { ...quiet, cooldownExpiredMs: 0 } })
  await store.migrate()
  const production = await openStore({ url: db.url, health: quiet }) // 30 min cooldown
  t.after(() => production.close())
  const events = []
  const prodEvents = []
  store.on('alert', (e) => events.push(e))
  production.on('alert', (e) => prodEvents.push(e))

  let r = await store.health()
  assert.equal(r.status, 'healthy', JSON.stringify(r))
  assert.equal(check(r, 'expired_keys').details.total, 0)

  await insertExpired(db, 'c1', 60, '1 hour')
  await insertExpired(db, 'c1', 40, '3 days')
  await insertExpired(db, 'c2', 20, '10 days')
  await insertExpired(db, 'c2', 20, '20 days')
  await insertExpired(db, 'c2', 10, '40 days')
  r = await store.health()
  const c = check(r, 'expired_keys')
  assert.equal(c.status, 'warning')
  assert.equal(r.status, 'warning')
  assert.deepEqual(c.details.by_age_since_expiry, { '0-1d': 60, '1-7d': 40, '7-14d': 20, '14-30d': 20, '>30d': 10 })
  assert.match(c.recommendation, /cleanup/)
  assert.deepEqual(ofKind(events, 'expired_keys'), [['healthy', 'warning']])

  await insertExpired(db, 'c3', 400, '2 hours')
  r = await store.health()
  assert.equal(check(r, 'expired_keys').status, 'critical')
  assert.deepEqual(ofKind(events, 'expired_keys'), [['healthy', 'warning'], ['warning', 'critical']])
  await production.health()
  assert.deepEqual(ofKind(prodEvents, 'expired_keys'), [['healthy', 'critical']])

  await db.query('DELETE FROM whatsapp_keys WHERE expires_at < now()')
  r = await store.health()
  assert.equal(check(r, 'expired_keys').status, 'healthy')
  // No cooldown: the recovery is an alert. With production's 30 minutes it is held back.
  assert.deepEqual(ofKind(events, 'expired_keys').at(-1), ['critical', 'healthy'])
  await production.health()
  assert.deepEqual(ofKind(prodEvents, 'expired_keys'), [['healthy', 'critical']])
  await production.close()
  await store.close()
})

test("alerts of the store's background checks reach 'alert' listeners without a health() call", { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const setup = await openStore({ url: db.url, health: quiet })
  await setup.migrate()
  await setup.close()
  await insertExpired(db, 'bg', 120, '2 days')
  const store = await openStore({ url: db.url, health: { sampleIntervalMs: 100, dbCheckIntervalMs: 100, publishIntervalMs: 0 } })
  const events = []
  store.on('alert', (e) => events.push(e))
  await until('the background alert', () => events.some((e) => e.kind === 'expired_keys'))
  assert.deepEqual(ofKind(events, 'expired_keys'), [['healthy', 'warning']])
  assert.match(events.find((e) => e.kind === 'expired_keys').summary, /120 expired/)
  await store.close()
})

test('slow queries behind a table lock, and a pool exhausted by calls blocked on it', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const store = await openStore({
    url: db.url,
    poolSize: 2,
    // Without the lease, so the gets of absent keys below ask the database (with it, the key
    // directory answers them from memory).
    lease: false,
    connectTimeoutMs: 60000,
    statementTimeoutMs: 60000,
    // The expired-keys count waits behind the same lock: give up on it quickly.
    health: { ...quiet, queryTimeoutMs: 300 }
  })
  await store.migrate()
  const events = []
  store.on('alert', (e) => events.push(e))
  const locker = new Client({ connectionString: db.url })
  locker.on('error', () => {}) // dropping the database at the end terminates it
  await locker.connect()
  t.after(() => locker.end())
  // Opened before the lock, its key directory loaded: that background read must not be one
  // of the calls blocked on the lock.
  const s = await store.session('poolco')
  await until('the key directory to load', async () => store.metrics().directory.companies >= 1)
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE')
  const lockWaiters = async () => Number((await db.query(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
  )).rows[0].n)

  const gets = [0, 1].map((i) => s.get('session', [`id${i}`]))
  await until('two connections blocked on the lock', async () => (await lockWaiters()) === 2)
  let r = await store.health()
  assert.equal(check(r, 'pool').status, 'warning', JSON.stringify(r))
  assert.equal(check(r, 'pool').details.in_use, 2)
  assert.deepEqual(ofKind(events, 'pool'), [['healthy', 'warning']])

  for (let i = 2; i < 8; i++) gets.push(s.get('session', [`id${i}`]))
  await until('six callers waiting for a connection', () => store.metrics().pool.waiting === 6)
  r = await store.health()
  assert.equal(check(r, 'pool').status, 'critical')
  assert.equal(r.status, 'critical')
  assert.deepEqual(ofKind(events, 'pool'), [['healthy', 'warning'], ['warning', 'critical']])
  assert.ok(check(r, 'pool').recommendation)

  // The lock holder sleeps 0.6 s more: every blocked get is a slow query (> 500 ms).
  await locker.query('SELECT pg_sleep(0.6)')
  await locker.query('COMMIT')
  await Promise.all(gets)
  r = await store.health()
  const slow = check(r, 'slow_queries')
  assert.equal(slow.status, 'critical', JSON.stringify(r))
  assert.equal(slow.details.in_window, 8)
  assert.deepEqual(ofKind(events, 'slow_queries'), [['healthy', 'critical']])
  assert.equal(r.process.recent_slow.length, 8)
  assert.equal(check(r, 'pool').status, 'healthy')
  // The pool's recovery falls within its 5 minute cooldown: held back.
  assert.deepEqual(ofKind(events, 'pool'), [['healthy', 'warning'], ['warning', 'critical']])
  await store.close()
})

// Strict check of the OpenMetrics text: only HELP/TYPE/UNIT comments and a final # EOF; every
// sample of a declared family, with a valid name, labels and number. Returns name{labels} -> value.
function parsePrometheus (text) {
  const lines = text.split('\n').filter((l) => l !== '')
  assert.equal(lines.at(-1), '# EOF')
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
  const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$/
  const families = []
  const samples = new Map()
  for (const l of lines.slice(0, -1)) {
    if (l.startsWith('# ')) {
      const [kw, name, rest] = l.slice(2).split(' ', 3)
      assert.ok(['HELP', 'TYPE', 'UNIT'].includes(kw), `unexpected comment: ${l}`)
      assert.match(name, NAME)
      if (kw === 'TYPE') {
        assert.ok(['counter', 'gauge', 'histogram', 'summary', 'info'].includes(rest), l)
        families.push({ name, type: rest })
      }
      continue
    }
    const m = SAMPLE.exec(l)
    assert.ok(m, `malformed sample: ${l}`)
    assert.ok(!Number.isNaN(Number(m[3])) || ['+Inf', '-Inf', 'NaN'].includes(m[3]), l)
    const fam = families.at(-1)
    assert.ok(fam, `sample before any TYPE: ${l}`)
    const suffixes = fam.type === 'counter' ? ['_total'] : fam.type === 'histogram' ? ['_bucket', '_sum', '_count'] : ['']
    assert.ok(suffixes.some((s) => m[1] === fam.name + s), `sample outside its family ${fam.name}: ${l}`)
    const labels = {}
    for (const [, k, v] of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v
    samples.set(sampleKey(m[1], labels), m[3] === '+Inf' ? Infinity : Number(m[3]))
  }
  return samples
}

// name{a="1",b="2"} with the labels in name order, whatever order the text had.
function sampleKey (name, labels = {}) {
  const pairs = Object.keys(labels).sort().map((k) => `${k}="${labels[k]}"`)
  return pairs.length ? `${name}{${pairs.join(',')}}` : name
}

test('prometheus() text parses and matches the metrics', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const store = await openStore({ url: db.url, health: quiet })
  await store.migrate()
  const s = await store.session('promco')
  for (let i = 0; i < 4; i++) await s.set({ session: { [`k${i}`]: { a: i } } })
  await s.get('session', ['k0', 'nope'])
  await store.health()
  assert.match(PROMETHEUS_CONTENT_TYPE, /^application\/openmetrics-text/)
  const text = store.prometheus()
  const samples = parsePrometheus(text)
  const m = store.metrics()
  const get = (name, labels) => {
    const k = sampleKey(name, labels)
    assert.ok(samples.has(k), `no ${k} in\n${text}`)
    return samples.get(k)
  }
  assert.equal(get('authstate_operations_total', { op: 'set' }), 4)
  assert.equal(get('authstate_operation_duration_seconds_count', { op: 'set' }), 4)
  assert.equal(get('authstate_operation_duration_seconds_bucket', { op: 'set', le: '+Inf' }), 4)
  assert.equal(get('authstate_cache_hits_total'), m.cache.hits)
  assert.equal(get('authstate_pool_max_connections'), m.pool.max_size)
  assert.equal(get('authstate_outage_active'), 0)
  assert.equal(get('authstate_health_status', { check: 'database' }), 0)
  await store.close()
})

test('PostgreSQL stopped: critical, writes pending, the CLI exits 2', { timeout: 180000 }, async (t) => {
  const db = await freshDatabase({ ownCluster: true })
  t.after(() => db.close())
  const store = await openStore({ url: db.url, connectTimeoutMs: 1000, statementTimeoutMs: 2000, health: quiet })
  await store.migrate()
  const events = []
  store.on('alert', (e) => events.push(e))
  const s = await store.session('downco')
  assert.equal((await store.health()).status, 'healthy')

  db.stopServer()
  let r = await store.health()
  assert.equal(r.status, 'critical')
  assert.equal(check(r, 'database').details.reachable, false)
  assert.ok(check(r, 'database').recommendation)
  assert.equal(check(r, 'expired_keys').status, 'unknown')
  await s.set({ session: { k: { a: 1 } } }) // kept during the outage
  r = await store.health()
  assert.equal(check(r, 'outage').status, 'critical')
  assert.equal(check(r, 'outage').details.pending_calls, 1)
  assert.deepEqual(ofKind(events, 'database'), [['healthy', 'critical']])
  assert.deepEqual(ofKind(events, 'outage'), [['healthy', 'critical']])

  const cli = spawnSync(authstateBinary(), ['health', '--json'], { env: { ...process.env, DATABASE_URL: db.url }, encoding: 'utf8' })
  assert.equal(cli.status, 2, cli.stderr)
  assert.equal(JSON.parse(cli.stdout).status, 'critical')

  db.startServer()
  await until('the pending write to be replayed', () => !store.metrics().outage.down)
  r = await store.health()
  assert.equal(check(r, 'database').status, 'healthy')
  assert.equal(check(r, 'outage').status, 'healthy')
  await store.close()
})

test('a Node service in another process: `authstate health --json` shows its live figures', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const setup = await openStore({ url: db.url, health: quiet })
  await setup.migrate()
  await setup.close()

  const service = `
    const { openStore } = require(${JSON.stringify(path.join(__dirname, '..'))})
    ;(async () => {
      const store = await openStore({ url: process.env.SVC_URL, health: { publishIntervalMs: 1000, sampleIntervalMs: 200 } })
      const s = await store.session('svcco')
      for (let i = 0; i < 7; i++) await s.set({ session: { ['k' + i]: { a: i } } })
      for (let i = 0; i < 5; i++) await s.get('session', ['missing' + i])
      console.log('READY')
      process.stdin.on('end', async () => { await store.close(); process.exit(0) })
      process.stdin.resume()
    })().catch((e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', service], { env: { ...process.env, SVC_URL: db.url }, stdio: ['pipe', 'pipe', 'inherit'] })
  t.after(() => child.kill())
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const rl = readline.createInterface({ input: child.stdout })
  await new Promise((resolve, reject) => {
    rl.on('line', (l) => { if (l.trim() === 'READY') resolve() })
    child.once('exit', (code) => reject(new Error(`service exited with ${code}`)))
  })

  const health = (args) => spawnSync(authstateBinary(), ['health', ...args], { env: { ...process.env, DATABASE_URL: db.url }, encoding: 'utf8' })
  let seen
  await until('the service snapshot with its traffic', () => {
    const r = health(['--json'])
    assert.equal(r.status, 0, r.stdout + r.stderr)
    const p = (JSON.parse(r.stdout).processes || []).find((p) => p.snapshot.pid === child.pid)
    const ops = Object.fromEntries((p?.snapshot.ops || []).map((o) => [o.kind, o.count]))
    if (ops.set === 7 && ops.get === 5) seen = p
    return Boolean(seen)
  })
  assert.equal(seen.live, true)
  assert.equal(seen.snapshot.companies_open, 1)
  assert.equal(seen.snapshot.status, 'healthy')
  const table = health([])
  assert.match(table.stdout, /STORE PROCESSES \(1 live, 0 gone\)/)
  assert.ok(table.stdout.includes(String(child.pid)))

  // A clean close removes its row.
  child.stdin.end()
  assert.equal(await exited, 0)
  const after = JSON.parse(health(['--json']).stdout)
  assert.equal(after.processes, undefined)
})
