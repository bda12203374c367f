'use strict'
// The test of record for `authstate export` / `authstate import`: real Baileys Signal traffic,
// then the accounts continue in a NEW process on the other store.
//  1. accounts that ran through the addon (PostgreSQL) are exported with `authstate export --all`
//     and continue on Baileys' own useMultiFileAuthState: 1:1 and group, both ways;
//  2. accounts that ran on Baileys' own folder store are imported with `authstate import` and
//     continue through the addon.
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const fs = require('node:fs')
const os = require('node:os')
const { execFile } = require('node:child_process')
const { promisify } = require('node:util')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase, authstateBinary } = require('./helpers/db.js')
const { loadBaileys, FakeServer, Account } = require('./helpers/signal.js')
const { folderAuth } = require('./helpers/folder-auth.js')

const run = promisify(execFile)
const GROUP = '120363042222222222@g.us'

async function authstate (url, args) {
  const { stdout } = await run(authstateBinary(), args, {
    env: { ...process.env, DATABASE_URL: url },
    maxBuffer: 64 << 20
  })
  return JSON.parse(stdout)
}

async function traffic (alice, bob) {
  const types = []
  types.push(await alice.send(bob, 'hi bob'))
  types.push(await bob.send(alice, 'hi alice'))
  for (let i = 0; i < 10; i++) {
    types.push(await alice.send(bob, `a->b ${i}`))
    types.push(await bob.send(alice, `b->a ${i}`))
  }
  for (let i = 0; i < 3; i++) {
    await alice.sendGroup(GROUP, [bob], `group ${i} from alice`)
    await bob.sendGroup(GROUP, [alice], `group ${i} from bob`)
  }
  return types
}

function tmpdir (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-export-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

async function continueIn (script, arg) {
  const { stdout } = await run(process.execPath, [path.join(__dirname, 'helpers', script), JSON.stringify(arg)],
    { maxBuffer: 16 << 20 })
  return JSON.parse(stdout.trim().split('\n').pop())
}

test('accounts exported from PostgreSQL continue on Baileys\' useMultiFileAuthState in a new process', { timeout: 600000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url })
  await store.migrate()
  const server = new FakeServer()
  const cfgA = { company: 'exp_alice', pn: '5511977770001', lid: '202000000000001' }
  const cfgB = { company: 'exp_bob', pn: '5511977770002', lid: '202000000000002' }
  const alice = new Account(B, await usePostgresAuthState(store, cfgA.company), { ...cfgA, server })
  const bob = new Account(B, await usePostgresAuthState(store, cfgB.company), { ...cfgB, server })
  assert.equal(await alice.uploadPreKeys(), 812)
  assert.equal(await bob.uploadPreKeys(), 812)
  const types = await traffic(alice, bob)
  assert.equal(types[0], 'pkmsg')
  await alice.auth.saveCreds()
  await bob.auth.saveCreds()
  await store.close()

  const dir = path.join(tmpdir(t), 'auth')
  const report = await authstate(db.url, ['export', '--all', '--dir', dir, '--json'])
  assert.equal(report.verified, true)
  assert.deepEqual(report.companies.map((c) => c.company_id), [cfgA.company, cfgB.company])
  const { rows } = await db.query('SELECT company_id, count(*)::int AS n FROM whatsapp_keys GROUP BY 1 ORDER BY 1')
  for (const r of rows) {
    const c = report.companies.find((x) => x.company_id === r.company_id)
    assert.equal(c.keys, r.n, `${r.company_id}: every key exported`)
    assert.equal(fs.readdirSync(path.join(dir, r.company_id)).length, r.n + 1)
  }
  const exported = {}
  for (const c of report.companies) for (const [k, n] of Object.entries(c.per_type)) exported[k] = (exported[k] || 0) + n
  for (const type of ['pre-key', 'session', 'sender-key', 'sender-key-memory', 'lid-mapping', 'identity-key']) {
    assert.ok(exported[type] > 0, `exported some ${type}: ${JSON.stringify(exported)}`)
  }
  // Baileys reads the creds back with its own reviver: buffers are Buffers.
  const creds = JSON.parse(fs.readFileSync(path.join(dir, cfgA.company, 'creds.json'), 'utf8'), B.BufferJSON.reviver)
  assert.ok(Buffer.isBuffer(creds.noiseKey.private) && creds.noiseKey.private.length === 32)
  assert.equal(creds.registrationId, alice.creds.registrationId)

  const serverFile = path.join(tmpdir(t), 'server.json')
  fs.writeFileSync(serverFile, JSON.stringify(server, B.BufferJSON.replacer))
  const out = await continueIn('continue-files.js', {
    dir,
    serverFile,
    accounts: [cfgA, cfgB],
    group: GROUP,
    rounds: 10,
    newContact: { company: 'exp_carol', pn: '5511977770003', lid: '202000000000003' }
  })
  assert.equal(out.oneToOne, 20)
  assert.equal(out.group, 6)
  assert.deepEqual(Object.keys(out.types), ['msg'], 'existing sessions continued, none rebuilt')
  assert.equal(out.lookups, 0, 'LID mappings came from the exported files')
  assert.equal(out.newContactFirst, 'pkmsg')
  assert.equal(out.creds[cfgA.pn].registrationId, alice.creds.registrationId)
  assert.equal(out.creds[cfgA.pn].nextPreKeyId, 813)
})

test('accounts that ran on Baileys\' own folders are imported and continue through the addon', { timeout: 600000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const base = tmpdir(t)
  const server = new FakeServer()
  const cfgA = { company: 'files_alice', pn: '5511966660001', lid: '203000000000001' }
  const cfgB = { company: 'files-bob', pn: '5511966660002', lid: '203000000000002' }
  const alice = new Account(B, await folderAuth(B, base, cfgA.company), { ...cfgA, server })
  const bob = new Account(B, await folderAuth(B, base, cfgB.company), { ...cfgB, server })
  assert.equal(await alice.uploadPreKeys(), 812)
  assert.equal(await bob.uploadPreKeys(), 812)
  const types = await traffic(alice, bob)
  assert.equal(types[0], 'pkmsg')
  await alice.auth.saveCreds()
  await bob.auth.saveCreds()

  for (const c of [cfgA, cfgB]) {
    const folder = path.join(base, c.company)
    const dry = await authstate(db.url, ['import', '--company', c.company, '--dir', folder, '--dry-run', '--json'])
    assert.equal(dry.dry_run, true)
    const r = await authstate(db.url, ['import', '--company', c.company, '--dir', folder, '--json'])
    assert.equal(r.verified, true)
    assert.equal(r.keys, fs.readdirSync(folder).length - 1, 'every key file imported')
    assert.equal(r.keys, dry.keys)
  }
  const { rows } = await db.query("SELECT count(*)::int AS n FROM whatsapp_keys WHERE company_id = 'files_alice' AND key_type = 'sender-key'")
  assert.ok(rows[0].n > 0)

  const serverFile = path.join(base, 'server.json')
  fs.writeFileSync(serverFile, JSON.stringify(server, B.BufferJSON.replacer))
  const out = await continueIn('continue.js', {
    url: db.url,
    serverFile,
    accounts: [cfgA, cfgB],
    group: GROUP,
    rounds: 10,
    newContact: { company: 'pg_carol', pn: '5511966660003', lid: '203000000000003' }
  })
  assert.equal(out.oneToOne, 20)
  assert.equal(out.group, 6)
  assert.deepEqual(Object.keys(out.types), ['msg'])
  assert.equal(out.lookups, 0, 'LID mappings came from the imported folder')
  assert.equal(out.newContactFirst, 'pkmsg', 'a new contact used one of the imported pre-keys')
  assert.equal(out.creds[cfgA.pn].registrationId, alice.creds.registrationId)
})
