#!/usr/bin/env node
'use strict'
// What PostgreSQL spends per upserted key under different storage settings of whatsapp_keys,
// side by side in one run (each variant in its own schema of one database, interleaved
// rounds): backend CPU (from /proc/<backend pid>/stat), WAL bytes, and the share of HOT
// updates (pg_stat_user_tables). Values are real Baileys session records (~1 KB) and the same
// record grown to ~3 KB (a session with old chains kept, over the 2 KB TOAST threshold).
//   node bench/storage.js
// DATABASE_URL is used when set (the server must run on this host for the CPU column),
// otherwise `authstate tempdb` starts a throwaway cluster.
// Options (env): STORAGE_KEYS (2000), STORAGE_ROUNDS (6).
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { Client } = require('pg')
const { openStore } = require('..')
const { freshDatabase } = require('../test/helpers/db.js')

const KEYS = Number(process.env.STORAGE_KEYS || 2000)
const ROUNDS = Number(process.env.STORAGE_ROUNDS || 6)
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100
const FIXTURES = path.join(__dirname, '..', '..', 'tests', 'fixtures', 'baileys')

// The key columns written as the store's upsert writes them (src/db/sql.rs, UPSERT), with
// `expires_at` exact (before) or rounded up to the hour (the store's step for a 7-day TTL).
const TTL = "make_interval(secs => 604800)"
const EXACT = `now() + ${TTL}`
// expires_at rounded up to the next hour: unchanged by most rewrites within the hour.
const HOURLY = `date_trunc('hour', now() + ${TTL}) + interval '1 hour'`

const VARIANTS = [
  { name: 'before 0005 (exact expires_at)', setup: [], expires: EXACT },
  { name: 'fillfactor 70', setup: ['ALTER TABLE whatsapp_keys SET (fillfactor = 70)'], expires: EXACT },
  { name: 'expires_at to the hour', setup: [], expires: HOURLY },
  { name: '0005: fillfactor 70 + expires_at to the hour', setup: ['ALTER TABLE whatsapp_keys SET (fillfactor = 70)'], expires: HOURLY },
  {
    name: '0005 + value SET STORAGE EXTERNAL',
    setup: ['ALTER TABLE whatsapp_keys SET (fillfactor = 70)', 'ALTER TABLE whatsapp_keys ALTER COLUMN value SET STORAGE EXTERNAL'],
    expires: HOURLY
  },
  {
    // Keeps values up to 8 KB inline: no TOAST work, but a ~4 KB row leaves no room for HOT.
    name: '0005 + toast_tuple_target 8160',
    setup: ['ALTER TABLE whatsapp_keys SET (fillfactor = 70, toast_tuple_target = 8160)'],
    expires: HOURLY
  }
]

// The same shape with every buffer's bytes new, as a session record after a ratchet step: a
// rewrite with the same bytes would let PostgreSQL log only the changed columns.
function refreshed (v) {
  if (Array.isArray(v)) return v.map(refreshed)
  if (v && typeof v === 'object') {
    if (v.type === 'Buffer' && typeof v.data === 'string') {
      return { type: 'Buffer', data: crypto.randomBytes(Buffer.from(v.data, 'base64').length).toString('base64') }
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, refreshed(x)]))
  }
  // libsignal keeps keys as base64 strings: new bytes of the same length.
  if (typeof v === 'string' && v.length >= 16 && /^[A-Za-z0-9+/]+=*$/.test(v)) {
    return crypto.randomBytes(Buffer.from(v, 'base64').length).toString('base64')
  }
  return v
}

function cpuTicks (pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12])
}

async function main () {
  const db = await freshDatabase()
  try {
    const store = await openStore({ url: db.url })
    await store.migrate()
    await store.close()
    const c = new Client({ connectionString: db.url })
    await c.connect()
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p
    let canCpu = true
    try { cpuTicks(pid) } catch { canCpu = false }

    const small = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'session-2.json'), 'utf8')).canonical
    const big = JSON.parse(JSON.stringify(small))
    // ~2 KB more of base64 (incompressible, as key material is), as old chains would add.
    big.oldChains = Array.from({ length: 16 }, (_, i) => ({
      type: 'Buffer', data: crypto.randomBytes(96 + i).toString('base64')
    }))
    const sizes = [['~1 KB', small], [`~${(JSON.stringify(big).length / 1024).toFixed(1)} KB`, big]]

    const rows = []
    for (const [label, template] of sizes) {
      const acc = VARIANTS.map(() => ({ ticks: 0, wal: 0n, n: 0 }))
      for (const [i, v] of VARIANTS.entries()) {
        const schema = `v${i}`
        await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema};
          CREATE TABLE ${schema}.whatsapp_keys (LIKE public.whatsapp_keys INCLUDING ALL)`)
        await c.query(`SET search_path = ${schema}`)
        for (const s of v.setup) await c.query(s)
        await c.query('RESET search_path')
      }
      const upsert = (i) => `INSERT INTO v${i}.whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
        SELECT 'c' || (g % 50), 'session', 'peer' || g, $1::jsonb, now(), ${VARIANTS[i].expires}
        FROM generate_series($2::int, $3::int) g
        ON CONFLICT (company_id, key_type, key_id) DO UPDATE
          SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at`
      // First round inserts; the measured rounds rewrite every key, 50 keys per statement
      // (one group commit's worth), interleaving the variants so load affects them alike.
      const first = JSON.stringify(refreshed(template))
      for (let i = 0; i < VARIANTS.length; i++) {
        for (let g = 0; g < KEYS; g += 50) await c.query(upsert(i), [first, g, Math.min(KEYS, g + 50) - 1])
      }
      const hot0 = []
      for (let i = 0; i < VARIANTS.length; i++) {
        const r = await c.query(`SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = $1`, [`v${i}`])
        hot0.push(r.rows[0] || { n_tup_upd: 0, n_tup_hot_upd: 0 })
      }
      for (let r = 0; r < ROUNDS; r++) {
        const value = JSON.stringify(refreshed(template)) // the same new bytes for every variant
        for (let i = 0; i < VARIANTS.length; i++) {
          const w0 = BigInt((await c.query('SELECT pg_current_wal_insert_lsn() - \'0/0\'::pg_lsn AS b')).rows[0].b)
          const t0 = canCpu ? cpuTicks(pid) : 0
          for (let g = 0; g < KEYS; g += 50) await c.query(upsert(i), [value, g, Math.min(KEYS, g + 50) - 1])
          const t1 = canCpu ? cpuTicks(pid) : 0
          const w1 = BigInt((await c.query('SELECT pg_current_wal_insert_lsn() - \'0/0\'::pg_lsn AS b')).rows[0].b)
          acc[i].ticks += t1 - t0
          acc[i].wal += w1 - w0
          acc[i].n += KEYS
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 700)) // stats are flushed at most every 0.5 s
      for (let i = 0; i < VARIANTS.length; i++) {
        const r = (await c.query(`SELECT pg_stat_force_next_flush()`).catch(() => null), await c.query(
          `SELECT n_tup_upd, n_tup_hot_upd, pg_total_relation_size('v${i}.whatsapp_keys') AS size FROM pg_stat_user_tables WHERE schemaname = $1`, [`v${i}`])).rows[0]
        const upd = Number(r.n_tup_upd) - Number(hot0[i].n_tup_upd)
        const hot = Number(r.n_tup_hot_upd) - Number(hot0[i].n_tup_hot_upd)
        rows.push([label, VARIANTS[i].name,
          canCpu ? ((acc[i].ticks / CLK_TCK) * 1e6 / acc[i].n).toFixed(1) : '-',
          (Number(acc[i].wal) / acc[i].n).toFixed(0),
          upd ? `${((100 * hot) / upd).toFixed(0)} %` : '-',
          `${(Number(r.size) / 1048576).toFixed(1)} MB`])
      }
    }
    await c.end()
    const head = ['value', 'storage', 'PG CPU us/key', 'WAL bytes/key', 'HOT updates', 'table+toast+indexes']
    const w = head.map((_, i) => Math.max(head[i].length, ...rows.map((r) => r[i].length)))
    const line = (r) => '| ' + r.map((x, i) => x.padEnd(w[i])).join(' | ') + ' |'
    console.log(line(head))
    console.log('|' + w.map((n) => '-'.repeat(n + 2)).join('|') + '|')
    for (const r of rows) console.log(line(r))
    console.log(`\n${KEYS} keys rewritten ${ROUNDS} times per variant, 50 keys per statement; load average ${require('node:os').loadavg().map((x) => x.toFixed(1)).join(' ')}`)
  } finally {
    await db.close()
  }
}

main().catch((e) => { console.error(e); process.exit(1) })
