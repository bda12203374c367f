'use strict'
// Real Baileys Signal traffic between accounts living in one process, with a tiny in-process
// stand-in for the WhatsApp server: it keeps each account's uploaded pre-key bundle, hands out
// bundles (one pre-key each, as the server does) and answers the PN -> LID lookup.
// Used by the node tests, the fixture generator and the benchmark. Any decryption failure throws.

const assert = require('node:assert/strict')

let baileysPromise
function loadBaileys () {
  if (!baileysPromise) {
    baileysPromise = import('baileys').catch(() => import('@whiskeysockets/baileys'))
  }
  return baileysPromise
}

// A silent pino-compatible logger.
const logger = {
  level: 'silent',
  child () { return logger },
  trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {}
}

class FakeServer {
  constructor () {
    this.bundles = new Map() // user -> { jid, registration, identity, skey, preKeys: Map<id, keyNode> }
    this.lidOf = new Map() // pn user -> lid user
    this.lookups = 0
    this.pnToLID = async (pns) => {
      this.lookups++
      const out = []
      for (const pn of pns) {
        const user = pn.split('@')[0].split(':')[0]
        const lid = this.lidOf.get(user)
        if (lid) out.push({ pn, lid: `${lid}@lid` })
      }
      return out
    }
  }

  register (pnUser, lidUser) { this.lidOf.set(pnUser, lidUser) }

  // node: the iq that getNextPreKeysNode builds (what a socket sends on first connect)
  upload (pnUser, node) {
    const child = (tag) => node.content.find((c) => c.tag === tag)
    const list = child('list').content
    const prev = this.bundles.get(pnUser)
    const preKeys = prev ? prev.preKeys : new Map()
    for (const k of list) {
      const id = Buffer.from(k.content.find((c) => c.tag === 'id').content).readUIntBE(0, 3)
      preKeys.set(id, k)
    }
    this.bundles.set(pnUser, {
      registration: child('registration'),
      identity: child('identity'),
      skey: child('skey'),
      preKeys
    })
    return list.length
  }

  // Public bundle data only, so another process can serve the same bundles.
  toJSON () {
    const bundles = {}
    for (const [user, b] of this.bundles) {
      bundles[user] = { ...b, preKeys: [...b.preKeys.entries()] }
    }
    return { bundles, lidOf: [...this.lidOf.entries()] }
  }

  static fromJSON (B, text) {
    const o = JSON.parse(text, B.BufferJSON.reviver)
    const s = new FakeServer()
    for (const [user, b] of Object.entries(o.bundles)) s.bundles.set(user, { ...b, preKeys: new Map(b.preKeys) })
    for (const [pn, lid] of o.lidOf) s.lidOf.set(pn, lid)
    return s
  }

  preKeyCount (pnUser) { return this.bundles.get(pnUser)?.preKeys.size ?? 0 }

  // The answer to an `encrypt`/`key` iq for one device: one unused pre-key is handed out.
  bundleNode (pnUser, jid) {
    const b = this.bundles.get(pnUser)
    assert.ok(b, `no bundle uploaded for ${pnUser}`)
    const content = [b.registration, b.identity, b.skey]
    const first = b.preKeys.keys().next()
    if (!first.done) {
      content.push(b.preKeys.get(first.value))
      b.preKeys.delete(first.value)
    }
    return {
      tag: 'iq',
      attrs: { type: 'result' },
      content: [{ tag: 'list', attrs: {}, content: [{ tag: 'user', attrs: { jid }, content }] }]
    }
  }
}

class Account {
  // auth: { state: { creds, keys }, saveCreds }
  constructor (B, auth, { pn, lid, server }) {
    this.B = B
    this.auth = auth
    this.pnUser = pn
    this.lidUser = lid
    this.jid = `${pn}@s.whatsapp.net`
    this.server = server
    server.register(pn, lid)
    this.keys = B.addTransactionCapability(auth.state.keys, logger, { maxCommitRetries: 3, delayBetweenTriesMs: 20 })
    this.repo = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository(
      { creds: auth.state.creds, keys: this.keys }, logger, server.pnToLID)
  }

  get creds () { return this.auth.state.creds }

  // First connect: the 812 pre-keys upload (keys.set of 812 pre-keys in one transaction).
  async uploadPreKeys (count = this.B.INITIAL_PREKEY_COUNT || 812) {
    let uploaded = 0
    await this.keys.transaction(async () => {
      const { update, node } = await this.B.getNextPreKeysNode({ creds: this.creds, keys: this.keys }, count)
      uploaded = this.server.upload(this.pnUser, node)
      Object.assign(this.creds, update)
    }, 'upload-pre-keys')
    await this.auth.saveCreds()
    return uploaded
  }

  // What the socket does before the first message to a device without a session.
  async ensureSession (other) {
    const { exists } = await this.repo.validateSession(other.jid)
    if (exists) return false
    await this.B.parseAndInjectE2ESessions(this.server.bundleNode(other.pnUser, other.jid), this.repo)
    return true
  }

  async send (other, text) {
    await this.ensureSession(other)
    const data = Buffer.from(text)
    const { type, ciphertext } = await this.repo.encryptMessage({ jid: other.jid, data })
    const plain = await other.repo.decryptMessage({ jid: this.jid, type, ciphertext })
    assert.equal(Buffer.from(plain).toString(), text, 'decrypted text differs')
    return type
  }

  // Group send as the socket does it: encrypt with our sender key, hand the sender-key
  // distribution message (1:1 encrypted) to members not yet in sender-key-memory, record them.
  async sendGroup (group, members, text) {
    const data = Buffer.from(text)
    const { ciphertext, senderKeyDistributionMessage } =
      await this.repo.encryptGroupMessage({ group, meId: this.jid, data })
    const { [group]: memory = {} } = await this.keys.get('sender-key-memory', [group])
    let distributed = 0
    for (const m of members) {
      if (memory[m.jid]) continue
      await this.ensureSession(m)
      const { type, ciphertext: c } = await this.repo.encryptMessage({ jid: m.jid, data: senderKeyDistributionMessage })
      const skdm = await m.repo.decryptMessage({ jid: this.jid, type, ciphertext: c })
      await m.repo.processSenderKeyDistributionMessage({
        item: { groupId: group, axolotlSenderKeyDistributionMessage: skdm },
        authorJid: this.jid
      })
      memory[m.jid] = true
      distributed++
    }
    if (distributed) await this.keys.set({ 'sender-key-memory': { [group]: memory } })
    for (const m of members) {
      const plain = await m.repo.decryptGroupMessage({ group, authorJid: this.jid, msg: ciphertext })
      assert.equal(Buffer.from(plain).toString(), text, 'decrypted group text differs')
    }
    return distributed
  }
}

// An in-memory auth state in the style of useMultiFileAuthState (values round-trip through
// BufferJSON like a file would). `record(type, id, liveValue)` sees every value Baileys writes.
function memoryAuth (B, record = () => {}) {
  const data = new Map()
  const creds = B.initAuthCreds()
  const roundTrip = (type, v) => {
    const out = JSON.parse(JSON.stringify(v, B.BufferJSON.replacer), B.BufferJSON.reviver)
    return type === 'app-state-sync-key' ? B.proto.Message.AppStateSyncKeyData.fromObject(out) : out
  }
  return {
    data,
    state: {
      creds,
      keys: {
        async get (type, ids) {
          const out = {}
          for (const id of ids) {
            const v = data.get(`${type}\u0000${id}`)
            if (v !== undefined) out[id] = roundTrip(type, v)
          }
          return out
        },
        async set (writes) {
          for (const [type, entries] of Object.entries(writes)) {
            for (const [id, v] of Object.entries(entries || {})) {
              if (v === null || v === undefined) data.delete(`${type}\u0000${id}`)
              else {
                data.set(`${type}\u0000${id}`, v)
                record(type, id, v)
              }
            }
          }
        }
      }
    },
    saveCreds: async () => {},
    // [{type, id, value}] with live values
    rows () {
      return [...data.entries()].map(([k, value]) => {
        const [type, id] = k.split('\u0000')
        return { type, id, value }
      })
    }
  }
}

function isBufferNode (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && v.type === 'Buffer' &&
    typeof v.data === 'string' && Object.keys(v).length === 2
}

// Rewrites every canonical buffer node {type:'Buffer',data:<base64>} of a JSON tree with f(bytes).
function mapBuffers (v, f) {
  if (isBufferNode(v)) return f(Buffer.from(v.data, 'base64'))
  if (Array.isArray(v)) return v.map((x) => mapBuffers(x, f))
  if (v !== null && typeof v === 'object') {
    const out = {}
    for (const [k, x] of Object.entries(v)) out[k] = mapBuffers(x, f)
    return out
  }
  return v
}

// The older shapes buffers were stored in (see DESIGN.md "Values").
const SHAPES = {
  array: (b) => b.toJSON(),
  legacy: (b) => ({ buffer: true, value: b.toString('base64') }),
  uint8: (b) => JSON.parse(JSON.stringify(new Uint8Array(b)))
}

module.exports = { loadBaileys, logger, FakeServer, Account, memoryAuth, mapBuffers, isBufferNode, SHAPES }
