'use strict'
// Journal durability from Node (durability: 'journal'): a set resolves once fsynced to the
// journal; the health report shows the lag (calls, bytes, oldest age) until the flusher commits;
// a process SIGKILLed right after its acknowledged set loses nothing: the next open replays the
// journal before anything else, and close() flushes it to PostgreSQL.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { openStore } = require('..')
const { freshDatabase } = require('./helpers/db.js')

const HOUR = 3600 * 1000

// A child Node process that writes in journal durability (never flushing by itself), says
// ACK once its set resolved, and waits to be killed.
function writer (url, journalPath, company) {
  const code = `
    const { openStore } = require(${JSON.stringify(path.join(__dirname, '..'))})
    ;(async () => {
      const store = await openStore({ url: ${JSON.stringify(url)}, durability: 'journal',
        journalPath: ${JSON.stringify(journalPath)}, journalFlushIntervalMs: ${HOUR},
        leaseExpiryMs: 2000, leaseHeartbeatMs: 500 })
      const s = await store.session(${JSON.stringify(company)})
      await s.set({ session: { 'a@s.whatsapp.net:1': { n: 41 } } })
      await s.set({ session: { 'a@s.whatsapp.net:1': { n: 42 } }, 'pre-key': { 7: { k: 'v' } } })
      console.log('ACK')
      setInterval(() => {}, 1000)
    })().catch((e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  const acked = new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (l) => { if (l === 'ACK') resolve() })
    child.on('exit', (c) => reject(new Error(`writer exited with ${c}`)))
  })
  return { child, acked }
}

test('journal durability: lag in health, SIGKILL loses nothing, reopen replays, close flushes', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-journal-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const setup = await openStore({ url: db.url })
  await setup.migrate()
  await setup.close()

  // In this process: acknowledged, visible, and shown as lag before any flush.
  const jA = path.join(dir, 'a.journal')
  const a = await openStore({ url: db.url, durability: 'journal', journalPath: jA, journalFlushIntervalMs: HOUR })
  const sa = await a.session('journal_a')
  await sa.set({ 'pre-key': { 1: { v: 1 } } })
  await sa.set({ 'pre-key': { 1: { v: 2 } } })
  assert.deepEqual(await sa.get('pre-key', ['1']), { 1: { v: 2 } })
  assert.ok(fs.statSync(jA).size > 0)
  const report = await a.health()
  const outage = report.checks.find((c) => c.name === 'outage')
  assert.match(outage.summary, /lag/)
  assert.equal(outage.details.durability, 'journal')
  assert.equal(outage.details.pending_calls, 1, 'two writes of one key coalesce')
  assert.ok(outage.details.pending_bytes > 0)
  assert.equal(typeof outage.details.oldest_pending_ms, 'number')
  const m = a.metrics()
  assert.equal(m.outage.durability, 'journal')
  assert.equal(m.outage.pending_calls, 1)
  const closed = await a.close()
  assert.deepEqual(closed.unflushed, [])
  assert.equal(fs.statSync(jA).size, 0, 'close flushed and emptied the journal')

  // A writer process SIGKILLed after its acknowledged sets: nothing reached PostgreSQL.
  const jB = path.join(dir, 'b.journal')
  const { child, acked } = writer(db.url, jB, 'journal_b')
  t.after(() => child.kill('SIGKILL'))
  await acked
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('exit', resolve))
  const plain = await openStore({ url: db.url, lease: false })
  const peek = await plain.session('journal_b')
  assert.deepEqual(await peek.get('session', ['a@s.whatsapp.net:1']), {}, 'only in the journal')
  await plain.close()

  // Reopened on the same journal: replayed at open (under the journal's lease token), then read.
  const b = await openStore({ url: db.url, durability: 'journal', journalPath: jB })
  const sb = await b.session('journal_b')
  assert.deepEqual(await sb.get('session', ['a@s.whatsapp.net:1']), { 'a@s.whatsapp.net:1': { n: 42 } })
  assert.deepEqual(await sb.get('pre-key', ['7']), { 7: { k: 'v' } })
  assert.deepEqual((await b.close()).unflushed, [])
  const check = await openStore({ url: db.url, lease: false })
  const sc = await check.session('journal_b')
  assert.deepEqual(await sc.get('session', ['a@s.whatsapp.net:1']), { 'a@s.whatsapp.net:1': { n: 42 } })
  await check.close()
})

test('durability must be commit or journal, and journal needs journalPath', async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  await assert.rejects(openStore({ url: db.url, durability: 'fast' }), (e) => e.code === 'EAUTHSTATE_INVALID')
  await assert.rejects(openStore({ url: db.url, durability: 'journal' }), (e) => {
    assert.equal(e.code, 'EAUTHSTATE_INVALID')
    assert.match(e.message, /journalPath/)
    return true
  })
})
