'use strict'
// One writer per account from Node: a second process is refused with EAUTHSTATE_LOCKED naming
// the holder, takes over after the holder is SIGKILLed, and a holder whose lease was taken
// over gets LOCKED on its next write, a 'lost' event, and nothing of that write lands.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { openStore } = require('..')
const { freshDatabase } = require('./helpers/db.js')

// A child Node process that holds the lease of `company` and waits to be killed.
function holder (url, company) {
  const code = `
    const { openStore } = require(${JSON.stringify(path.join(__dirname, '..'))})
    ;(async () => {
      const store = await openStore({ url: ${JSON.stringify(url)}, leaseExpiryMs: 2000, leaseHeartbeatMs: 500 })
      const s = await store.session(${JSON.stringify(company)})
      await s.set({ session: { held: { by: 'child' } } })
      console.log('READY')
      setInterval(() => {}, 1000)
    })().catch((e) => { console.error(e); process.exit(1) })`
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  const ready = new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (l) => { if (l === 'READY') resolve() })
    child.on('exit', (c) => reject(new Error(`holder exited with ${c}`)))
  })
  return { child, ready }
}

test('a second process is refused, takes over after SIGKILL; a fenced holder hears "lost"', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const setup = await openStore({ url: db.url, lease: false })
  await setup.migrate()
  await setup.close()

  const { child, ready } = holder(db.url, 'lease_co')
  t.after(() => child.kill('SIGKILL'))
  await ready

  const store = await openStore({ url: db.url, leaseExpiryMs: 2000, leaseHeartbeatMs: 500 })
  t.after(() => store.close())
  await assert.rejects(store.session('lease_co'), (e) => {
    assert.equal(e.code, 'EAUTHSTATE_LOCKED')
    assert.match(e.message, new RegExp(`pid ${child.pid}\\b`))
    return true
  })

  // The holder dies without releasing: the lease is free once it expires.
  child.kill('SIGKILL')
  let s
  const deadline = Date.now() + 20000
  while (!s) {
    try {
      s = await store.session('lease_co')
    } catch (e) {
      assert.equal(e.code, 'EAUTHSTATE_LOCKED')
      assert.ok(Date.now() < deadline, 'the lease never expired')
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  }
  assert.deepEqual((await s.get('session', ['held'])).held, { by: 'child' })

  // Another holder takes the lease over (as a process that found it expired would): our
  // next write is fenced, fails LOCKED, raises 'lost' once, and writes nothing.
  const lost = []
  store.on('lost', (l) => lost.push(l))
  await db.query("UPDATE authstate_leases SET token = token + 1, holder_instance = 'other', expires_at = now() + interval '1 hour' WHERE company_id = 'lease_co'")
  await assert.rejects(s.set({ session: { after: { by: 'fenced' } } }), { code: 'EAUTHSTATE_LOCKED' })
  await assert.rejects(s.set({ session: { again: { by: 'fenced' } } }), { code: 'EAUTHSTATE_LOCKED' })
  assert.equal(lost.length, 1)
  assert.equal(lost[0].companyId, 'lease_co')
  const rows = await db.query("SELECT key_id FROM whatsapp_keys WHERE company_id = 'lease_co' ORDER BY key_id")
  assert.deepEqual(rows.rows.map((r) => r.key_id), ['held'])
  assert.ok(store.metrics().leases.lost >= 1)
})
