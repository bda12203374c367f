'use strict'
// Run in a NEW Node process by test/export.test.js: rebuilds accounts from folders written by
// `authstate export`, opened with Baileys' own useMultiFileAuthState (no addon, no database),
// and continues their traffic. argv[2]: JSON
//   { dir, serverFile, accounts: [{company, pn, lid}], group, rounds, newContact: {company, pn, lid} }
// account folders are <dir>/<company>. Prints one JSON line; any decryption failure exits non-zero.
const fs = require('node:fs')
const path = require('node:path')
const assert = require('node:assert/strict')
const { loadBaileys, FakeServer, Account } = require('./signal.js')
const { folderAuth } = require('./folder-auth.js')

async function main () {
  const cfg = JSON.parse(process.argv[2])
  const B = await loadBaileys()
  const server = FakeServer.fromJSON(B, fs.readFileSync(cfg.serverFile, 'utf8'))
  const open = (company) => folderAuth(B, cfg.dir, company)
  const accounts = []
  for (const a of cfg.accounts) {
    const auth = await open(a.company)
    assert.ok(fs.existsSync(path.join(cfg.dir, a.company, 'creds.json')), 'an exported folder')
    accounts.push(new Account(B, auth, { pn: a.pn, lid: a.lid, server }))
  }
  const report = { types: {}, oneToOne: 0, group: 0, lookups: 0, creds: {} }
  const count = (t) => { report.types[t] = (report.types[t] || 0) + 1 }
  const [x, y] = accounts
  for (const a of accounts) report.creds[a.pnUser] = { registrationId: a.creds.registrationId, nextPreKeyId: a.creds.nextPreKeyId }
  for (let i = 0; i < cfg.rounds; i++) {
    count(await x.send(y, `files ${i} x->y`))
    count(await y.send(x, `files ${i} y->x`))
    report.oneToOne += 2
  }
  for (let i = 0; i < 3; i++) {
    await x.sendGroup(cfg.group, [y], `files group ${i} from x`)
    await y.sendGroup(cfg.group, [x], `files group ${i} from y`)
    report.group += 2
  }
  report.lookups = server.lookups
  if (cfg.newContact) {
    const n = cfg.newContact
    const z = new Account(B, await open(n.company), { pn: n.pn, lid: n.lid, server })
    await z.uploadPreKeys(30)
    // z's first message uses one of x's pre-keys, which must be in x's exported folder
    report.newContactFirst = await z.send(x, 'hello from a new contact')
    for (let i = 0; i < 3; i++) {
      count(await x.send(z, `x->z ${i}`))
      count(await z.send(x, `z->x ${i}`))
    }
    await z.sendGroup(cfg.group, [x, y], 'new member says hi')
    await x.sendGroup(cfg.group, [y, z], 'welcome')
  }
  for (const a of accounts) await a.auth.saveCreds()
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
