#!/usr/bin/env node
'use strict'
// Generates tests/fixtures/baileys/*.json: real values written by the real `baileys` package for
// every key type, plus creds from initAuthCreds. Each fixture is
//   { type, id, canonical, variants: { array, legacy, uint8 } }
// canonical = JSON.parse(JSON.stringify(value, BufferJSON.replacer)); the variants are the same
// value with every buffer in one of the older shapes. The Rust core test checks that every
// variant canonicalizes to `canonical`.
//
//   node node/scripts/gen-fixtures.js [outDir]

const fs = require('node:fs')
const path = require('node:path')
const crypto = require('node:crypto')
const { loadBaileys, FakeServer, Account, memoryAuth, mapBuffers, SHAPES } = require('../test/helpers/signal.js')

const OUT = path.resolve(process.argv[2] || path.join(__dirname, '..', '..', 'tests', 'fixtures', 'baileys'))

function fixture (B, type, id, value) {
  const canonical = JSON.parse(JSON.stringify(value, B.BufferJSON.replacer))
  let empty = false
  const variants = {
    array: mapBuffers(canonical, SHAPES.array),
    legacy: mapBuffers(canonical, SHAPES.legacy),
    uint8: mapBuffers(canonical, (b) => {
      if (b.length === 0) empty = true
      return SHAPES.uint8(b)
    })
  }
  // An empty Uint8Array stringifies to {}, which no reader can tell from an empty object.
  if (empty) delete variants.uint8
  return { type, id, canonical, variants }
}

async function main () {
  const B = await loadBaileys()
  const seen = new Map() // type -> [{id, value}]
  const record = (type, id, v) => {
    if (!seen.has(type)) seen.set(type, [])
    seen.get(type).push({ id, value: JSON.parse(JSON.stringify(v, B.BufferJSON.replacer)), live: v })
  }
  const server = new FakeServer()
  const alice = new Account(B, memoryAuth(B, record), { pn: '5511990000001', lid: '101000000000001', server })
  const bob = new Account(B, memoryAuth(B, record), { pn: '5511990000002', lid: '101000000000002', server })
  const carol = new Account(B, memoryAuth(B, record), { pn: '5511990000003', lid: '101000000000003', server })
  for (const a of [alice, bob, carol]) await a.uploadPreKeys(20)

  await alice.send(bob, 'hello bob') // pkmsg
  await bob.send(alice, 'hello alice') // msg
  for (let i = 0; i < 20; i++) {
    await alice.send(bob, `a->b ${i}`)
    await bob.send(alice, `b->a ${i}`)
  }
  const group = '120363040000000001@g.us'
  await alice.sendGroup(group, [bob, carol], 'hi group')
  await bob.sendGroup(group, [alice, carol], 'hi from bob')
  await alice.sendGroup(group, [bob, carol], 'again')

  // Values the socket writes from server data that this harness has no server for, built the
  // way Baileys builds them.
  const keyId = crypto.randomBytes(6)
  const keyIdB64 = Buffer.concat([Buffer.alloc(0), keyId]).toString('base64')
  const keyData = B.proto.Message.AppStateSyncKeyData.decode(B.proto.Message.AppStateSyncKeyData.encode(
    B.proto.Message.AppStateSyncKeyData.fromObject({
      keyData: crypto.randomBytes(32),
      fingerprint: { rawId: 1234567890, currentIndex: 3, deviceIndexes: [0, 1, 3] },
      timestamp: Date.now()
    })).finish())
  const appState = { [keyIdB64]: keyData }
  const getAppStateSyncKey = async (id) => appState[id]
  let ltState = B.newLTHashState()
  for (const mod of [{ mute: Date.now() + 8 * 3600 * 1000 }, { pin: true }]) {
    const patch = B.chatModificationToAppPatch(mod, bob.jid)
    const { state } = await B.encodeSyncdPatch(patch, keyIdB64, ltState, getAppStateSyncKey)
    ltState = state
  }
  const tctokenJid = `${bob.lidUser}@lid`
  const extra = [
    ['app-state-sync-key', keyIdB64, keyData],
    ['app-state-sync-version', 'regular_high', ltState],
    ['device-list', bob.pnUser, ['0', '1', '23']],
    ['tctoken', tctokenJid, { token: crypto.randomBytes(24), timestamp: String(Math.floor(Date.now() / 1000)), senderTimestamp: Math.floor(Date.now() / 1000) - 60 }],
    ['tctoken', '__index', { token: Buffer.from(JSON.stringify([tctokenJid])) }]
  ]
  for (const [t, id, v] of extra) record(t, id, v)

  fs.mkdirSync(OUT, { recursive: true })
  for (const f of fs.readdirSync(OUT)) if (f.endsWith('.json')) fs.unlinkSync(path.join(OUT, f))
  const files = []
  const write = (name, fx) => {
    fs.writeFileSync(path.join(OUT, name), JSON.stringify(fx, null, 1) + '\n')
    files.push(name)
  }
  write('creds.json', fixture(B, 'creds', 'creds', alice.creds))
  // a few of each type; sessions: fresh outgoing, fresh incoming, and after 20 round trips
  const pick = {
    'pre-key': (l) => [l[0], l[l.length - 1]],
    session: (l) => [l[0], l[1], l[l.length - 1]],
    'sender-key': (l) => [l[0], l[l.length - 1]],
    'sender-key-memory': (l) => [l[l.length - 1]],
    'identity-key': (l) => [l[0]],
    'lid-mapping': (l) => l.slice(0, 2)
  }
  for (const [type, list] of seen) {
    const chosen = (pick[type] || ((l) => l))(list)
    chosen.forEach((e, i) => {
      const safe = type.replace(/[^a-z0-9-]/g, '_')
      write(`${safe}-${i}.json`, fixture(B, type, e.id, e.live))
    })
  }
  const want = ['pre-key', 'session', 'sender-key', 'sender-key-memory', 'app-state-sync-key',
    'app-state-sync-version', 'lid-mapping', 'device-list', 'tctoken', 'identity-key']
  const missing = want.filter((t) => !seen.has(t))
  if (missing.length) throw new Error(`no fixture for ${missing.join(', ')}`)
  console.log(`wrote ${files.length} fixtures to ${OUT}`)
}

main().catch((e) => { console.error(e); process.exit(1) })
