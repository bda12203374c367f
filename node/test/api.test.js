'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')
const { loadBaileys } = require('./helpers/signal.js')

const FIXTURES = path.join(__dirname, '..', '..', 'tests', 'fixtures', 'baileys')

test('store and session API', { timeout: 120000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const B = await loadBaileys()
  const store = await openStore({ url: db.url, poolSize: 4, statementTimeoutMs: 10000, ttlMs: { 'device-list': 3600000 } })
  const report = await store.migrate()
  assert.ok(Array.isArray(report.applied) && Array.isArray(report.alreadyApplied))
  const again = await store.migrate()
  assert.deepEqual(again.applied, [])
  const s = await store.session('api_co')
  assert.equal(s.companyId, 'api_co')

  await t.test('creds: null, then saved exactly, unchanged save writes nothing', async () => {
    assert.equal(await s.loadCreds(), null)
    const creds = B.initAuthCreds()
    assert.equal(await s.saveCreds(creds), true)
    assert.equal(await s.saveCreds(creds), false)
    const back = await s.loadCreds()
    assert.deepEqual(JSON.stringify(back, B.BufferJSON.replacer), JSON.stringify(creds, B.BufferJSON.replacer))
    assert.ok(Buffer.isBuffer(back.noiseKey.private))
    assert.equal(typeof back.advSecretKey, 'string')
  })

  await t.test('every fixture type round-trips exactly; rows hold the canonical shape', async () => {
    const files = fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.json') && f !== 'creds.json')
    assert.ok(files.length >= 10)
    for (const f of files) {
      const fx = JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8'))
      let live = JSON.parse(JSON.stringify(fx.canonical), B.BufferJSON.reviver)
      if (fx.type === 'app-state-sync-key') live = B.proto.Message.AppStateSyncKeyData.fromObject(live)
      await s.set({ [fx.type]: { [fx.id]: live } })
      const got = await s.get(fx.type, [fx.id, 'missing-id'])
      assert.deepEqual(Object.keys(got), [fx.id], f)
      assert.deepEqual(JSON.parse(JSON.stringify(got[fx.id], B.BufferJSON.replacer)), fx.canonical, f)
      const { rows } = await db.query('SELECT value FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = $3',
        ['api_co', fx.type, fx.id])
      assert.deepEqual(rows[0].value, fx.canonical, f)
      if (fx.type === 'app-state-sync-key') {
        assert.ok(got[fx.id] instanceof B.proto.Message.AppStateSyncKeyData)
        assert.ok(got[fx.id].keyData instanceof Uint8Array && got[fx.id].keyData.length === 32)
      }
      if (fx.type === 'identity-key') assert.ok(Buffer.isBuffer(got[fx.id]))
    }
  })

  await t.test('every stored legacy variant reads back as the canonical value', async () => {
    const files = fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.json') && f !== 'creds.json')
    let n = 0
    for (const f of files) {
      const fx = JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8'))
      for (const [shape, v] of Object.entries(fx.variants)) {
        const id = `${f}-${shape}-${fx.id}`
        n++
        await db.query('INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ($1, $2, $3, $4::jsonb)',
          [`variants_${n}`, fx.type, id, JSON.stringify(v)])
        // A company per row, opened after the row is written: written behind the store's back
        // into a company it holds, the row would be absent to it (its key directory is exact
        // only while it is the only writer).
        const vs = await store.session(`variants_${n}`)
        const got = await vs.get(fx.type, [id])
        assert.deepEqual(JSON.parse(JSON.stringify(got[id], B.BufferJSON.replacer)), fx.canonical, `${f} ${shape}`)
      }
    }
  })

  await t.test('un-awaited calls take effect in call order; null deletes', async () => {
    const ps = []
    for (let i = 0; i < 50; i++) {
      ps.push(s.set({ 'device-list': { order: [String(i)] } }))
      if (i % 7 === 0) ps.push(s.set({ 'device-list': { order: null } }))
    }
    ps.push(s.set({ 'device-list': { order: ['last'] }, 'sender-key-memory': { g: { a: true } } }))
    ps.push(s.set({ 'sender-key-memory': { g: null } }))
    await Promise.all(ps)
    const got = await s.get('device-list', ['order'])
    assert.deepEqual(got, { order: ['last'] })
    assert.deepEqual(await s.get('sender-key-memory', ['g']), {})
    const { rows } = await db.query("SELECT expires_at > now() + interval '50 minutes' AND expires_at < now() + interval '70 minutes' AS ok FROM whatsapp_keys WHERE company_id = 'api_co' AND key_type = 'device-list'")
    assert.equal(rows[0].ok, true, 'ttlMs option reaches the core')
  })

  await t.test('get with no ids, unknown types, clear', async () => {
    assert.deepEqual(await s.get('session', []), {})
    await s.set({ 'some-future-type': { 'x@y.z:1': { n: 1 } } })
    assert.deepEqual(await s.get('some-future-type', ['x@y.z:1']), { 'x@y.z:1': { n: 1 } })
    await s.clear()
    assert.deepEqual(await s.get('some-future-type', ['x@y.z:1']), {})
    assert.equal(await s.loadCreds(), null)
  })

  await t.test('usePostgresAuthState: initAuthCreds when empty, saveCreds persists', async () => {
    const { state, saveCreds } = await usePostgresAuthState(store, 'uses_co')
    assert.equal(typeof state.creds.registrationId, 'number')
    state.creds.me = { id: '5511999999999:1@s.whatsapp.net', name: 'x' }
    await saveCreds()
    await state.keys.set({ 'pre-key': { 1: B.Curve.generateKeyPair() } })
    const again = await usePostgresAuthState(store, 'uses_co')
    assert.deepEqual(again.state.creds.me, state.creds.me)
    assert.deepEqual(again.state.creds.signedIdentityKey, state.creds.signedIdentityKey)
    const pk = await again.state.keys.get('pre-key', ['1'])
    assert.ok(Buffer.isBuffer(pk['1'].public))
  })

  await t.test('metrics', () => {
    const m = store.metrics()
    assert.equal(typeof m, 'object')
    assert.ok(JSON.stringify(m).includes('get'))
  })

  await t.test('session.close waits for pending writes, then refuses calls', async () => {
    const s2 = await store.session('close_co')
    const p = s2.set({ 'pre-key': { 5: { private: Buffer.alloc(32, 1), public: Buffer.alloc(32, 2) } } })
    await s2.close()
    const { rows } = await db.query("SELECT count(*)::int AS n FROM whatsapp_keys WHERE company_id = 'close_co'")
    assert.equal(rows[0].n, 1)
    await p
    await assert.rejects(s2.get('pre-key', ['5']), { code: 'EAUTHSTATE_CLOSED' })
  })

  await store.close()
  await assert.rejects(s.get('pre-key', ['1']), { code: 'EAUTHSTATE_CLOSED' })
  await assert.rejects(store.session('after_close'), (e) => e.code === 'EAUTHSTATE_CLOSED')
})
