// A user's ES module program (see app.cjs): the old module's one-line form on the shared store
// from DATABASE_URL, an app-state-sync-key revived as Baileys' protobuf class, the old helpers.
import assert from 'node:assert/strict'
import { proto, Curve } from 'baileys'
import { useTimewebAuthState, removeTimewebAuthState, getQueryMetrics, closeSharedStore, AuthStateError } from 'authstate'

const { state, saveCreds } = await useTimewebAuthState('user_esm')
const keyData = proto.Message.AppStateSyncKeyData.fromObject({
  keyData: Buffer.alloc(32, 7), fingerprint: { rawId: 1, currentIndex: 2, deviceIndexes: [0, 1] }, timestamp: 1700000000
})
await state.keys.set({ 'app-state-sync-key': { AAAAAQ: keyData }, 'pre-key': { 1: Curve.generateKeyPair() } })
await saveCreds()
const got = (await state.keys.get('app-state-sync-key', ['AAAAAQ'])).AAAAAQ
assert.ok(got instanceof proto.Message.AppStateSyncKeyData)
assert.deepEqual(Buffer.from(got.keyData), Buffer.alloc(32, 7))

const tmp = await useTimewebAuthState('user_esm_tmp')
await tmp.saveCreds()
await removeTimewebAuthState('user_esm_tmp')
await assert.rejects(removeTimewebAuthState('not a valid id'), (e) => e instanceof AuthStateError && e.code === 'EAUTHSTATE_INVALID')
const metrics = getQueryMetrics()
assert.ok(metrics.ops.length > 0)
await closeSharedStore()
console.log(JSON.stringify({ appStateSyncKey: got.constructor.name, ops: metrics.ops.map((o) => o.kind) }))
