'use strict'
// One service process of test/takeover-baileys.test.js: a store with the lease on (short expiry)
// serving the companies (WhatsApp accounts) the test tells it to open, each with a real Baileys
// Signal repository over usePostgresAuthState. The test drives it over the IPC channel; the
// peers of every account live in the test process, so ciphertext crosses the process boundary
// both ways and a killed worker's accounts can be continued by another worker.
// argv[2]: JSON { url, leaseExpiryMs, leaseHeartbeatMs, contacts: [{pn, lid}] }
// Requests { id, op, args } are answered { id, result } or { id, error: { code, message } }:
//   open { company, pn, lid }     acquire the lease, load the creds, build the repository
//                                 -> { registrationId }
//   upload { company, count }     pre-keys stored via keys.set, creds saved -> { node } (the
//                                 upload iq as BufferJSON text, for the test's FakeServer)
//   inject { company, bundle }    start a session from a pre-key bundle (an `encrypt` iq answer)
//   hasSession { company, jid }   -> boolean
//   encrypt { company, jid, text } -> { type, ciphertext (base64) }
//   decrypt { company, jid, type, ciphertext } -> { text }
//   status                        -> { pid, lost: ['lost' events], leases, lookups: {company: n} }
//   close                         store.close(), then exit 0
// The worker exits when the test process goes away (IPC disconnect), so none is ever left behind.
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('../..')
const { loadBaileys, FakeServer, Account } = require('./signal.js')

async function main () {
  const cfg = JSON.parse(process.argv[2])
  const B = await loadBaileys()
  const store = await openStore({
    url: cfg.url,
    leaseExpiryMs: cfg.leaseExpiryMs,
    leaseHeartbeatMs: cfg.leaseHeartbeatMs
  })
  const lost = []
  store.on('lost', (l) => lost.push(l))
  const accounts = new Map() // company -> { account, server }

  const account = (company) => {
    const a = accounts.get(company)
    assert.ok(a, `company ${company} is not open in worker ${process.pid}`)
    return a.account
  }

  const ops = {
    async open ({ company, pn, lid }) {
      assert.ok(!accounts.has(company), `company ${company} is open already`)
      const auth = await usePostgresAuthState(store, company)
      // The PN -> LID lookup of the server; a continued account must find every mapping it
      // needs in PostgreSQL, which `lookups` shows.
      const server = new FakeServer()
      for (const c of cfg.contacts) server.register(c.pn, c.lid)
      accounts.set(company, { account: new Account(B, auth, { pn, lid, server }), server })
      return { registrationId: auth.state.creds.registrationId }
    },
    async upload ({ company, count }) {
      const a = account(company)
      let node
      await a.keys.transaction(async () => {
        const next = await B.getNextPreKeysNode({ creds: a.creds, keys: a.keys }, count)
        node = JSON.stringify(next.node, B.BufferJSON.replacer)
        Object.assign(a.creds, next.update)
      }, 'upload-pre-keys')
      await a.auth.saveCreds()
      return { node }
    },
    async inject ({ company, bundle }) {
      await B.parseAndInjectE2ESessions(JSON.parse(bundle, B.BufferJSON.reviver), account(company).repo)
      return null
    },
    async hasSession ({ company, jid }) {
      return (await account(company).repo.validateSession(jid)).exists
    },
    async encrypt ({ company, jid, text }) {
      const { type, ciphertext } = await account(company).repo.encryptMessage({ jid, data: Buffer.from(text) })
      return { type, ciphertext: Buffer.from(ciphertext).toString('base64') }
    },
    async decrypt ({ company, jid, type, ciphertext }) {
      const plain = await account(company).repo.decryptMessage({ jid, type, ciphertext: Buffer.from(ciphertext, 'base64') })
      return { text: Buffer.from(plain).toString() }
    },
    async status () {
      const lookups = {}
      for (const [company, a] of accounts) lookups[company] = a.server.lookups
      return { pid: process.pid, lost, leases: store.metrics().leases, lookups }
    },
    async close () {
      await store.close()
      setImmediate(() => process.exit(0))
      return null
    }
  }

  process.on('message', (m) => {
    const op = ops[m.op]
    Promise.resolve()
      .then(() => {
        if (!op) throw new Error(`unknown op ${m.op}`)
        return op(m.args || {})
      })
      .then(
        (result) => process.send({ id: m.id, result }),
        (e) => process.send({ id: m.id, error: { code: e && e.code, message: String(e && e.message), stack: String(e && e.stack) } })
      )
  })
  process.send({ ready: true, pid: process.pid })
}

// The test process is gone (or closed the channel): never linger.
process.on('disconnect', () => process.exit(1))
main().catch((e) => {
  console.error(e)
  process.exit(1)
})
