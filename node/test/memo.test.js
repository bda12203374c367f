'use strict'
// A cached get of one key may be answered from a memo of the parsed value (index.js parseMemo):
// each caller must still get its own copy, and a write must be seen at once.
const test = require('node:test')
const assert = require('node:assert/strict')
const { openStore, usePostgresAuthState } = require('..')
const { freshDatabase } = require('./helpers/db.js')

test('repeated cached gets of one key are copies, and writes are seen', { timeout: 60000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const store = await openStore({ url: db.url, lease: false })
  t.after(() => store.close())
  await store.migrate()
  const { state } = await usePostgresAuthState(store, 'memo_co')
  const v1 = { private: Buffer.alloc(32, 1), public: Buffer.alloc(33, 2), nested: { list: [1, { a: 'x' }] } }
  await state.keys.set({ 'pre-key': { 7: v1, __proto__: null } })
  const ids = ['7']
  const expect = async (want) => {
    // five reads: the first parses, the second fills the memo, the rest copy it
    for (let i = 0; i < 5; i++) {
      const got = await state.keys.get('pre-key', ids)
      assert.deepStrictEqual(got, want === undefined ? {} : { 7: want })
      if (want === undefined) continue
      assert.ok(Buffer.isBuffer(got[7].private))
      // what one caller does to its value never reaches the next
      got[7].private[0] = 99
      if (got[7].nested.list[1]) got[7].nested.list[1].a = 'changed'
      got[7].nested.list.push('more')
      got[7].extra = true
    }
  }
  await expect(v1)
  const v2 = { private: Buffer.alloc(32, 3), public: Buffer.alloc(33, 4), nested: { list: [] } }
  await state.keys.set({ 'pre-key': { 7: v2 } })
  await expect(v2)
  await state.keys.set({ 'pre-key': { 7: null } })
  await expect(undefined)
  await state.keys.set({ 'pre-key': { 7: v1 } })
  await expect(v1)

  // an id "__proto__" stays an own key of the answer, and so does one inside a value
  const odd = JSON.parse('{"__proto__":{"type":"x"},"b":[{"__proto__":1}]}')
  await state.keys.set({ session: JSON.parse('{"__proto__":' + JSON.stringify(odd) + '}') })
  for (let i = 0; i < 4; i++) {
    const got = await state.keys.get('session', ['__proto__'])
    assert.equal(Object.getPrototypeOf(got), Object.prototype)
    assert.ok(Object.prototype.hasOwnProperty.call(got, '__proto__'))
    assert.equal(Object.getPrototypeOf(got.__proto__), Object.prototype) // eslint-disable-line no-proto
    assert.deepStrictEqual(got.__proto__, odd) // eslint-disable-line no-proto
    assert.ok(Object.prototype.hasOwnProperty.call(got.__proto__.b[0], '__proto__')) // eslint-disable-line no-proto
  }
})
