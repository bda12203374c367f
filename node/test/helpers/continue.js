'use strict'
// Run in a NEW Node process by the tests: rebuilds accounts from PostgreSQL alone (through the
// addon) and continues their traffic. argv[2]: JSON
//   { url, serverFile, accounts: [{company, pn, lid}], group, rounds, newContact: {company, pn, lid} }
// Prints one JSON line with what it did; any decryption failure exits non-zero.
const fs = require('node:fs')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('../..')
const { loadBaileys, FakeServer, Account } = require('./signal.js')

async function main () {
  const cfg = JSON.parse(process.argv[2])
  const B = await loadBaileys()
  const server = FakeServer.fromJSON(B, fs.readFileSync(cfg.serverFile, 'utf8'))
  const store = await openStore({ url: cfg.url })
  const accounts = []
  for (const a of cfg.accounts) {
    const auth = await usePostgresAuthState(store, a.company)
    assert.ok(auth.state.creds.registered !== undefined, 'creds loaded')
    accounts.push(new Account(B, auth, { pn: a.pn, lid: a.lid, server }))
  }
  const report = { types: {}, oneToOne: 0, group: 0, lookups: 0, creds: {} }
  const count = (t) => { report.types[t] = (report.types[t] || 0) + 1 }
  const [x, y] = accounts
  for (const a of accounts) report.creds[a.pnUser] = { registrationId: a.creds.registrationId, nextPreKeyId: a.creds.nextPreKeyId }
  for (let i = 0; i < cfg.rounds; i++) {
    count(await x.send(y, `child ${i} x->y`))
    count(await y.send(x, `child ${i} y->x`))
    report.oneToOne += 2
  }
  for (let i = 0; i < 3; i++) {
    await x.sendGroup(cfg.group, [y], `child group ${i} from x`)
    await y.sendGroup(cfg.group, [x], `child group ${i} from y`)
    report.group += 2
  }
  // the LID mappings came from PostgreSQL: the server lookup was never needed
  report.lookups = server.lookups
  if (cfg.newContact) {
    const n = cfg.newContact
    const auth = await usePostgresAuthState(store, n.company)
    const z = new Account(B, auth, { pn: n.pn, lid: n.lid, server })
    await z.uploadPreKeys(30)
    // z starts a session with x from x's bundle: one of x's pre-keys stored in PostgreSQL
    const before = server.preKeyCount(x.pnUser)
    report.newContactFirst = await z.send(x, 'hello from a new contact')
    assert.equal(server.preKeyCount(x.pnUser), before - 1)
    for (let i = 0; i < 5; i++) {
      count(await x.send(z, `x->z ${i}`))
      count(await z.send(x, `z->x ${i}`))
    }
    await z.sendGroup(cfg.group, [x, y], 'new member says hi')
    await x.sendGroup(cfg.group, [y, z], 'welcome')
    await z.auth.saveCreds()
  }
  for (const a of accounts) await a.auth.saveCreds()
  const closed = await store.close()
  report.closed = closed
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
