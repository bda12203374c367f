'use strict'
// Run in a NEW Node process by test/outage-new-contacts.test.js: rebuilds every account from
// PostgreSQL alone (through the addon, no Baileys cache) and continues ALL their traffic: each
// ordered pair of accounts exchanges `rounds` 1:1 messages, and every account writes to every
// group with all the others as members. argv[2]: JSON
//   { url, serverFile, accounts: [{company, pn, lid}], groups: [jid], rounds }
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
    assert.ok(auth.state.creds.registered !== undefined, `creds of ${a.company} loaded`)
    accounts.push(new Account(B, auth, { pn: a.pn, lid: a.lid, server }))
  }
  const report = { types: {}, oneToOne: 0, group: 0, distributed: 0, lookups: 0, creds: {} }
  const count = (t) => { report.types[t] = (report.types[t] || 0) + 1 }
  for (const a of accounts) report.creds[a.pnUser] = { registrationId: a.creds.registrationId }
  for (let i = 0; i < cfg.rounds; i++) {
    for (const x of accounts) {
      for (const y of accounts) {
        if (x === y) continue
        count(await x.send(y, `child ${i} ${x.pnUser}->${y.pnUser}`))
        report.oneToOne++
      }
    }
  }
  for (const group of cfg.groups) {
    for (const x of accounts) {
      const members = accounts.filter((y) => y !== x)
      report.distributed += await x.sendGroup(group, members, `child ${group} from ${x.pnUser}`)
      report.group++
    }
  }
  // the LID mappings came from PostgreSQL: the server lookup was never needed
  report.lookups = server.lookups
  for (const a of accounts) await a.auth.saveCreds()
  report.closed = await store.close()
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
