#!/usr/bin/env node
'use strict'
// Side-by-side benchmark, one run: the addon vs. a reference JS implementation of the old
// module (bench/reference-pg.js) vs. Baileys' useMultiFileAuthState in a temp dir.
//   npm run bench          (builds the release addon first)
//   node bench/run.js      (uses the addon as last built: node/authstate.<platform>.node)
// DATABASE_URL is used when set, otherwise `authstate tempdb` starts a throwaway cluster.
// Options (env): BENCH_MESSAGES_PER_ACCOUNT (40), BENCH_ACCOUNTS (50), BENCH_REPS (8).
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { Pool } = require('pg')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('../test/helpers/db.js')
const { loadBaileys } = require('../test/helpers/signal.js')
const { makeReference } = require('./reference-pg.js')

const ACCOUNTS = Number(process.env.BENCH_ACCOUNTS || 50)
const PER_ACCOUNT = Number(process.env.BENCH_MESSAGES_PER_ACCOUNT || 40)
const REPS = Number(process.env.BENCH_REPS || 8)
const FIXTURES = path.join(__dirname, '..', '..', 'tests', 'fixtures', 'baileys')

const now = () => performance.now()
function pct (xs, p) {
  if (!xs.length) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]
}

async function main () {
  const B = await loadBaileys()
  const db = await freshDatabase()
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-bench-'))
  const results = [] // {workload, impl, rate, unit, p50, p99}
  try {
    const setupStore = await openStore({ url: db.url })
    await setupStore.migrate()
    await setupStore.close()

    const fixture = (f) => JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8')).canonical
    const sessionValue = JSON.parse(JSON.stringify(fixture('session-2.json')), B.BufferJSON.reviver)
    const senderKeyValue = JSON.parse(JSON.stringify(fixture('sender-key-1.json')), B.BufferJSON.reviver)
    const preKeys = {}
    for (let i = 1; i <= 812; i++) preKeys[i] = B.Curve.generateKeyPair()

    const pool = new Pool({ connectionString: db.url, max: 20 })
    const impls = [
      {
        name: 'addon',
        async init () { this.store = await openStore({ url: db.url }) },
        open (c) { return usePostgresAuthState(this.store, c) },
        async coldGet (c, type, ids) {
          const store = await openStore({ url: db.url })
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
        name: 'reference-pg',
        async init () { this.use = makeReference(pool, B) },
        open (c) { return this.use(c) },
        async coldGet (c, type, ids) {
          const auth = await this.use(c)
          const t0 = now()
          const got = await auth.state.keys.get(type, ids)
          return { got, dt: now() - t0 }
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
    for (const impl of impls) await impl.init()

    // 1. the 812-pre-key set (first connect)
    for (const impl of impls) {
      const lat = []
      let total = 0
      for (let r = 0; r < REPS; r++) {
        const auth = await impl.open(`pk_${impl.name.replace(/\W/g, '')}_${r}`)
        const t0 = now()
        await auth.state.keys.set({ 'pre-key': preKeys })
        const dt = now() - t0
        lat.push(dt)
        total += dt
      }
      results.push({ workload: '812-pre-key set', impl: impl.name, rate: (812 * REPS) / (total / 1000), unit: 'keys/s', p50: pct(lat, 50), p99: pct(lat, 99) })
    }

    // 2. 50 accounts exchanging messages (storage traffic of Signal messaging)
    for (const impl of impls) {
      const tag = impl.name.replace(/\W/g, '')
      const accts = []
      for (let i = 0; i < ACCOUNTS; i++) accts.push((await impl.open(`msg_${tag}_${i}`)).state.keys)
      const addr = (i) => `55119${String(i).padStart(8, '0')}_1.0`
      const groupOf = (i) => `1203630${String(i % 10).padStart(11, '0')}@g.us`
      const membersOf = (g) => [...Array(ACCOUNTS).keys()].filter((i) => groupOf(i) === g)
      const session1 = async (keys, peer) => {
        const { [peer]: s } = await keys.get('session', [peer])
        await keys.set({ session: { [peer]: s || sessionValue } })
      }
      const lat = []
      let messages = 0
      const t0 = now()
      await Promise.all(accts.map(async (keys, i) => {
        for (let k = 0; k < PER_ACCOUNT; k++) {
          const m0 = now()
          if (k % 5 === 4) {
            const g = groupOf(i)
            const name = `${g}::${addr(i)}`
            const { [name]: sk } = await keys.get('sender-key', [name])
            await keys.set({ 'sender-key': { [name]: sk || senderKeyValue } })
            const members = membersOf(g).filter((j) => j !== i)
            const memory = {}
            for (const j of members) memory[`55119${String(j).padStart(8, '0')}@s.whatsapp.net`] = true
            await keys.set({ 'sender-key-memory': { [g]: memory } })
            for (const j of members) {
              const { [name]: rsk } = await accts[j].get('sender-key', [name])
              await accts[j].set({ 'sender-key': { [name]: rsk || senderKeyValue } })
            }
          } else {
            const j = (i + 1 + k) % ACCOUNTS
            await session1(keys, addr(j))
            await session1(accts[j], addr(i))
          }
          lat.push(now() - m0)
          messages++
        }
      }))
      const total = now() - t0
      results.push({ workload: `${ACCOUNTS} accounts messaging`, impl: impl.name, rate: messages / (total / 1000), unit: 'msg/s', p50: pct(lat, 50), p99: pct(lat, 99) })
    }

    // 3. cold get of 1,000 keys, 4. cached get
    for (const impl of impls) {
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
      for (let r = 0; r < Math.max(3, Math.floor(REPS / 2)); r++) {
        const { got, dt } = await impl.coldGet(company, 'session', ids)
        if (Object.keys(got).length !== 1000) throw new Error(`${impl.name}: cold get returned ${Object.keys(got).length}`)
        lat.push(dt)
      }
      const sum = lat.reduce((a, b) => a + b, 0)
      results.push({ workload: 'cold get of 1,000 keys', impl: impl.name, rate: (1000 * lat.length) / (sum / 1000), unit: 'keys/s', p50: pct(lat, 50), p99: pct(lat, 99) })

      const hot = await impl.open(company)
      await hot.state.keys.get('session', [ids[0]]) // warm
      const lat2 = []
      const n = 3000
      const t0 = now()
      for (let r = 0; r < n; r++) {
        const a = now()
        const got = await hot.state.keys.get('session', [ids[r % 10]])
        lat2.push(now() - a)
        if (!got[ids[r % 10]]) throw new Error('cached get missed')
      }
      const total = now() - t0
      results.push({ workload: 'cached get (1 session)', impl: impl.name, rate: n / (total / 1000), unit: 'gets/s', p50: pct(lat2, 50), p99: pct(lat2, 99) })
    }
    for (const impl of impls) await impl.done()
    await pool.end()
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
    await db.close()
  }

  // table
  const rows = [['workload', 'implementation', 'throughput', 'p50 ms', 'p99 ms', 'addon vs this']]
  for (const r of results) {
    const addon = results.find((x) => x.workload === r.workload && x.impl === 'addon')
    rows.push([r.workload, r.impl, `${r.rate.toFixed(0)} ${r.unit}`, r.p50.toFixed(3), r.p99.toFixed(3),
      r.impl === 'addon' ? '-' : `${(addon.rate / r.rate).toFixed(2)}x`])
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)))
  const line = (r) => '| ' + r.map((x, c) => x.padEnd(w[c])).join(' | ') + ' |'
  console.log(line(rows[0]))
  console.log('|' + w.map((n) => '-'.repeat(n + 2)).join('|') + '|')
  for (const r of rows.slice(1)) console.log(line(r))
  console.log(`\n${ACCOUNTS} accounts x ${PER_ACCOUNT} messages (every 5th a group message to a ${ACCOUNTS / 10}-member group); ` +
    `${REPS} reps of the 812-key set; node ${process.version}, ${os.cpus().length} cores`)
}

main().catch((e) => { console.error(e); process.exit(1) })
