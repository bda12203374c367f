'use strict'
// The conversion of values to and from the addon's JSON text takes shortcuts (stringify without
// the replacer when a value holds no buffer; buffers revived by a walk instead of a reviver).
// These properties hold them to the plain forms: JSON.stringify(value, bufferReplacer) and
// JSON.parse(text, bufferReviver), over arbitrary trees with buffers, typed arrays, toJSON
// objects, undefined, BigInts and `__proto__` keys (fast-check shrinks any counterexample).
const test = require('node:test')
const assert = require('node:assert/strict')
const fc = require('fast-check')
const { __json, bufferReplacer, bufferReviver, AuthStateError } = require('..')

const leaf = fc.oneof(
  fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constant(undefined),
  fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
  fc.uint8Array({ maxLength: 40 }),
  // a view into a larger buffer: only its bytes are written
  fc.uint8Array({ minLength: 4, maxLength: 40 }).map((a) => Buffer.from(a).subarray(1, a.length - 1)),
  fc.int16Array({ maxLength: 4 }),
  fc.date({ noInvalidDate: true }),
  fc.constant({ toJSON (key) { return { key, bytes: Buffer.from([1, 2, 3]) } } }),
  // text that looks like a buffer node but is not one the core writes
  fc.record({ type: fc.constant('Buffer'), data: fc.oneof(fc.string(), fc.array(fc.nat(255), { maxLength: 4 })) })
)
const key = fc.oneof(fc.string(), fc.constantFrom('__proto__', 'type', 'data', 'toJSON', ''))
const { tree } = fc.letrec((tie) => ({
  tree: fc.oneof({ depthSize: 'small' }, leaf, tie('array'), tie('object')),
  array: fc.array(tie('tree'), { maxLength: 5 }),
  object: fc.dictionary(key, tie('tree'), { maxKeys: 5 })
}))

function replacerForm (value) {
  try {
    return { text: JSON.stringify(value, bufferReplacer) }
  } catch (e) {
    return { error: e }
  }
}

test('stringify writes exactly what JSON.stringify with bufferReplacer writes', () => {
  fc.assert(fc.property(tree, (value) => {
    const want = replacerForm(value)
    if (want.error || want.text === undefined) {
      assert.throws(() => __json.stringify(value, 'v'), AuthStateError)
      return
    }
    assert.equal(__json.stringify(value, 'v'), want.text)
  }), { numRuns: 3000 })
})

test('parse revives exactly what JSON.parse with bufferReviver revives', () => {
  fc.assert(fc.property(tree, (value) => {
    const { text } = replacerForm(value)
    if (text === undefined) return
    const got = __json.parse(text)
    const want = JSON.parse(text, bufferReviver)
    assert.deepStrictEqual(got, want)
    // the same kinds in the same places: Buffers where the reviver makes Buffers
    assert.equal(JSON.stringify(got, bufferReplacer), JSON.stringify(want, bufferReplacer))
  }), { numRuns: 3000 })
})

test('BigInts, cycles and deep trees are refused as before', () => {
  assert.throws(() => __json.stringify({ a: [1n] }, 'v'), (e) => e.code === 'EAUTHSTATE_INVALID' && /BigInt/.test(e.message))
  const cyclic = { a: {} }
  cyclic.a.b = cyclic
  assert.throws(() => __json.stringify(cyclic, 'v'), (e) => e.code === 'EAUTHSTATE_INVALID' && /circular/.test(e.message))
  let deep = { leaf: Buffer.from('x') }
  for (let i = 0; i < 500; i++) deep = { d: deep }
  assert.equal(__json.stringify(deep, 'v'), JSON.stringify(deep, bufferReplacer))
})

// Repeated cached gets of one key hand out copies of a parsed value instead of parsing again.
test('copyParsed copies what parse makes: equal, and sharing no object or buffer with it', () => {
  // parse makes trees (no object twice), so comparing the two trees in step finds any sharing
  const shared = (a, b) => {
    if (a === null || typeof a !== 'object') return false
    if (a === b) return true
    if (a instanceof Uint8Array) return a.length > 0 && a.buffer === b.buffer && a.byteOffset === b.byteOffset
    return Object.keys(a).some((k) => shared(a[k], b[k]))
  }
  fc.assert(fc.property(tree, (value) => {
    const { text } = replacerForm(value)
    if (text === undefined) return
    const parsed = __json.parse(text)
    const copy = __json.copyParsed(parsed)
    assert.deepStrictEqual(copy, parsed)
    // Plain objects, exactly as JSON.parse makes them (the copy's own constructor is not seen).
    const plain = (x) => {
      if (x === null || typeof x !== 'object' || x instanceof Uint8Array) return true
      if (Array.isArray(x)) return x.every(plain)
      return Object.getPrototypeOf(x) === Object.prototype &&
        Object.prototype.toString.call(x) === '[object Object]' && Object.keys(x).every((k) => plain(x[k]))
    }
    assert.ok(plain(copy), 'every object of the copy is a plain object')
    assert.equal(JSON.stringify(copy, bufferReplacer), JSON.stringify(parsed, bufferReplacer))
    assert.ok(!shared(copy, parsed), 'the copy shares nothing with the memo')
  }), { numRuns: 3000 })
})
