'use strict'
// A user's CommonJS program (run by test/package.test.js in a folder where `authstate` and
// `baileys` were installed from tarballs / the registry): Baileys generates and stores
// pre-keys in a key-store transaction, as a socket does on first connect; a second store
// (as after a restart) reads the same creds and keys.
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('authstate')

const logger = { level: 'silent', child () { return logger }, trace () {}, debug () {}, info () {}, warn () {}, error () {}, fatal () {} }

async function main () {
  const B = await import('baileys')
  const store = await openStore({ url: process.env.DATABASE_URL })
  await store.migrate()
  const { state, saveCreds } = await usePostgresAuthState(store, 'user_cjs')
  const keys = B.addTransactionCapability(state.keys, logger, { maxCommitRetries: 1, delayBetweenTriesMs: 10 })
  await keys.transaction(async () => {
    const { update } = await B.getNextPreKeysNode({ creds: state.creds, keys }, 30)
    Object.assign(state.creds, update)
  }, 'upload-pre-keys')
  await saveCreds()
  const ids = Array.from({ length: 30 }, (_, i) => String(i + 1))
  const got = await state.keys.get('pre-key', ids)
  assert.equal(Object.keys(got).length, 30)
  assert.ok(Buffer.isBuffer(got['1'].public) && got['1'].public.length === 32)
  await store.close()

  const store2 = await openStore({ url: process.env.DATABASE_URL })
  const again = await usePostgresAuthState(store2, 'user_cjs')
  assert.deepEqual(again.state.creds.signedIdentityKey, state.creds.signedIdentityKey)
  assert.equal(again.state.creds.nextPreKeyId, 31)
  assert.deepEqual((await again.state.keys.get('pre-key', ['30']))['30'], got['30'])
  await store2.close()
  console.log(JSON.stringify({ preKeys: Object.keys(got).length, nextPreKeyId: again.state.creds.nextPreKeyId }))
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
