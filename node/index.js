'use strict'
// authstate for Node: Baileys' auth state in PostgreSQL through the native addon.
// This file only converts: JS values <-> JSON text (buffers as {type:'Buffer',data:<base64>}).
// Errors are built by the addon (node/src/lib.rs) with their `code` (and `sqlstate`, `cause`);
// here they only get the AuthStateError prototype. All storage logic is in the Rust core.

/**
 * Error codes (`err.code`), one per kind of the core's `ErrorKind::ALL`; `ERROR_CODES` is that
 * list as the addon reports it, and test/errors.test.js checks this comment against it.
 *   EAUTHSTATE_NOT_FOUND    the thing asked for does not exist
 *   EAUTHSTATE_INVALID      bad input, refused before any SQL; nothing was written
 *   EAUTHSTATE_UNAVAILABLE  PostgreSQL cannot be reached and memory could not answer
 *   EAUTHSTATE_TIMEOUT      a connect or statement timeout expired
 *   EAUTHSTATE_READ_ONLY    outage under the 'read-only' policy: writes are refused
 *   EAUTHSTATE_INTERNAL     a bug or environment failure (journal I/O, a caught panic)
 *   EAUTHSTATE_BACKLOG      writes not yet in PostgreSQL (an outage, or the lag of durability
 *                           'journal') reached maxPendingBytes
 *   EAUTHSTATE_LOCKED       another holder owns the resource (a lease, a migration)
 *   EAUTHSTATE_MIGRATION    a migration is missing, edited, unknown to this version, or failed
 *   EAUTHSTATE_DATABASE     PostgreSQL refused the statement, or a stored row has a bad shape
 *   EAUTHSTATE_CLOSED       the store or session was closed
 * Errors from the database also carry `err.sqlstate` (e.g. '3D000'); `err.cause` is the
 * underlying error chain (each an Error with that error's text), when there is one.
 */

const native = loadNative()
const ERROR_CODES = Object.freeze(native.errorCodes())

// The generated loader (native.js, by @napi-rs/cli) picks the prebuilt binary for this platform:
// ./authstate.<platform>.node in a checkout, else the package authstate-<platform>.
function loadNative () {
  try {
    return require('./native.js')
  } catch (e) {
    const { platform, arch } = process
    // the packed package lists its platform packages (scripts/pack.js); a checkout lists none
    const supported = Object.keys(require('./package.json').optionalDependencies || {})
      .map((name) => name.replace(/^authstate-/, ''))
    const err = new Error(
      `authstate: no native binding could be loaded for ${platform}-${arch} (Node ${process.version}): ${e && e.message}\n` +
      `Prebuilt platforms: ${supported.join(', ') || 'none (a checkout: build it)'}. npm installs the matching package ` +
      '(authstate-<platform>) as an optional dependency: reinstall without --omit=optional / --no-optional, ' +
      'and do not copy node_modules between machines of different platforms. ' +
      'On another platform, build from a checkout: cd node && npm ci && npm run build (needs cargo).',
      { cause: e })
    err.code = 'EAUTHSTATE_INTERNAL'
    throw err
  }
}

class AuthStateError extends Error {
  constructor (code, message, options) {
    super(message, options)
    this.code = code
  }
}
AuthStateError.prototype.name = 'AuthStateError'

const NAPI_ARG_ERRORS = new Set(['InvalidArg', 'ObjectExpected', 'StringExpected', 'NameExpected',
  'FunctionExpected', 'NumberExpected', 'BooleanExpected', 'ArrayExpected', 'BigintExpected'])
const CODES = new Set(ERROR_CODES)

// Every error that leaves this module goes through here exactly once. The addon's errors keep
// their object (message, code, sqlstate, cause, stack); they only become AuthStateErrors.
function toAuthError (e) {
  if (e instanceof AuthStateError) return e
  if (e instanceof Error && CODES.has(e.code)) return Object.setPrototypeOf(e, AuthStateError.prototype)
  const message = e && typeof e.message === 'string' ? e.message : String(e)
  // napi's own argument conversion (a number where a string was expected, ...)
  if (e && NAPI_ARG_ERRORS.has(e.code)) return new AuthStateError('EAUTHSTATE_INVALID', message, { cause: e })
  return new AuthStateError('EAUTHSTATE_INTERNAL', message, { cause: e })
}

const invalid = (message, cause) => new AuthStateError('EAUTHSTATE_INVALID', message, cause ? { cause } : undefined)

// ---- the peer dependency (baileys or @whiskeysockets/baileys), loaded on first need ----------

let baileys
function loadBaileys () {
  if (!baileys) {
    const tryImport = (name) => import(name)
    baileys = tryImport('baileys').catch((e) => {
      if (e && (e.code === 'ERR_MODULE_NOT_FOUND' || e.code === 'MODULE_NOT_FOUND')) {
        return tryImport('@whiskeysockets/baileys')
      }
      throw e
    }).then((m) => (m && m.initAuthCreds ? m : (m && m.default) || m)).catch((e) => {
      baileys = undefined
      throw new AuthStateError('EAUTHSTATE_INTERNAL',
        `authstate needs the peer dependency "baileys" (or "@whiskeysockets/baileys"): ${e.message}`, { cause: e })
    })
  }
  return baileys
}

// ---- JSON with exact buffers ----------------------------------------------------------------

// Like Baileys' BufferJSON.replacer: Buffers and Uint8Arrays become {type:'Buffer',data:<base64>}.
// `this[key]` is the value before toJSON, so Buffers are recognised directly.
function bufferReplacer (key, value) {
  const raw = this[key]
  if (raw instanceof Uint8Array) {
    return { type: 'Buffer', data: Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64') }
  }
  if (typeof value === 'bigint') throw invalid(`a BigInt (at ${JSON.stringify(key)}) is not JSON`)
  return value
}

// Whether JSON.stringify without the replacer could write `x` differently: it holds a
// Uint8Array, a BigInt (the replacer's error) or an object with a toJSON method (what that returns
// is not looked at here), or it is too deep to look through (a cycle: the replacer's stringify
// reports it). Signal sessions, the values written most, hold none of these, and V8's stringify
// without a replacer function takes them at about twice the speed.
function needsReplacer (x, depth) {
  if (typeof x === 'bigint') return true
  if (x === null || typeof x !== 'object') return false
  if (depth > 64 || x instanceof Uint8Array || typeof x.toJSON === 'function') return true
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) if (needsReplacer(x[i], depth + 1)) return true
    return false
  }
  for (const k in x) if (needsReplacer(x[k], depth + 1)) return true
  return false
}

// Revives canonical buffer nodes into Buffers, as a JSON.parse reviver (exported, like Baileys'
// BufferJSON.reviver, for text a service reads itself).
function bufferReviver (key, value) {
  if (value !== null && typeof value === 'object' && value.type === 'Buffer' && typeof value.data === 'string') {
    return Buffer.from(value.data, 'base64')
  }
  return value
}

// Revives canonical buffer nodes (the only shape the core returns) into Buffers, in place and
// bottom-up like a JSON.parse reviver, which took about twice as long.
function reviveBuffers (x) {
  if (x === null || typeof x !== 'object') return x
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) {
      const v = x[i]
      if (v !== null && typeof v === 'object') x[i] = reviveBuffers(v)
    }
    return x
  }
  for (const k in x) {
    const v = x[k]
    if (v !== null && typeof v === 'object') {
      const r = reviveBuffers(v)
      if (r !== v) x[k] = r
    }
  }
  if (x.type === 'Buffer' && typeof x.data === 'string') return Buffer.from(x.data, 'base64')
  return x
}

// Thrown by writeWithBuffers where only JSON.stringify with the replacer knows the answer.
const UNUSUAL = Symbol('not plain data')

// JSON.stringify(x, bufferReplacer) for plain data that holds buffers: V8 calls the replacer for
// every member and Buffer's toJSON before it (an array of every byte), which made a sender key's
// text take ~10x this walk. Members without buffers go to JSON.stringify whole. Anything but
// plain objects, arrays and Uint8Arrays on the way to a buffer (toJSON objects, class instances,
// boxed primitives, a cycle, a tree deeper than 64) throws UNUSUAL.
function writeWithBuffers (x, depth, stack) {
  if (x instanceof Uint8Array) {
    return `{"type":"Buffer","data":"${Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64')}"}`
  }
  if (x === null || typeof x !== 'object' || typeof x.toJSON === 'function' || depth > 64 || stack.includes(x)) throw UNUSUAL
  const member = (v) => needsReplacer(v, depth + 1) ? writeWithBuffers(v, depth + 1, stack) : JSON.stringify(v)
  stack.push(x)
  let text
  if (Array.isArray(x) && Object.getPrototypeOf(x) === Array.prototype) {
    const parts = []
    for (let i = 0; i < x.length; i++) parts.push(member(x[i]) ?? 'null')
    text = `[${parts.join(',')}]`
  } else {
    const proto = Object.getPrototypeOf(x)
    if (proto !== Object.prototype && proto !== null) throw UNUSUAL
    const parts = []
    for (const k of Object.keys(x)) {
      const v = member(x[k])
      if (v !== undefined) parts.push(`${JSON.stringify(k)}:${v}`)
    }
    text = `{${parts.join(',')}}`
  }
  stack.pop()
  return text
}

function toText (value) {
  if (!needsReplacer(value, 0)) return JSON.stringify(value)
  try {
    return writeWithBuffers(value, 0, [])
  } catch (e) {
    if (e !== UNUSUAL) throw e
    return JSON.stringify(value, bufferReplacer)
  }
}

function stringify (value, what) {
  let text
  try {
    text = toText(value)
  } catch (e) {
    if (e instanceof AuthStateError) throw invalid(`${what}: ${e.message}`)
    throw invalid(`${what} is not JSON-able: ${e && e.message}`, e)
  }
  if (text === undefined) throw invalid(`${what} is not JSON-able (${typeof value})`)
  return text
}

function parse (text) {
  // Most session values hold no buffer at all: skip the walk for them.
  return text.includes('"Buffer"') ? reviveBuffers(JSON.parse(text)) : JSON.parse(text)
}

// The copies' objects: plain objects (prototype Object.prototype, constructor Object), made by a
// constructor of their own so that V8 grows their hidden classes from this function's root map
// instead of the one every `{}` shares. A Signal session has objects keyed by base64 keys
// (`_sessions`, `_chains`), so each of its copies adds a property name of its own to the root map
// it starts from. Once Baileys is loaded, the shared root holds so many such branches (its
// protobuf code, and every session JSON.parse reads) that V8 stops adding more and makes a new
// hidden class at every copy: copying one session took 3.6-5.9 us instead of ~1 us.
function PlainObject () {}
PlainObject.prototype = Object.prototype

// Sets the property "__proto__" of `o` as JSON.parse makes it: an own, ordinary property (an
// assignment would set the prototype instead). Callers test for the name themselves, so their
// own assignments, the common case, stay at their call sites.
function defineProto (o, value) {
  Object.defineProperty(o, '__proto__', { value, enumerable: true, writable: true, configurable: true })
}

// A deep copy of what parse() makes (plain objects, arrays, Buffers, primitives): ~4x faster
// than parsing the text again, and the caller may change its copy freely.
function copyParsed (x) {
  if (x === null || typeof x !== 'object') return x
  if (x instanceof Uint8Array) return Buffer.from(x)
  if (Array.isArray(x)) {
    const a = new Array(x.length)
    for (let i = 0; i < x.length; i++) a[i] = copyParsed(x[i])
    return a
  }
  const o = new PlainObject()
  for (const k in x) {
    if (k === '__proto__') defineProto(o, copyParsed(x[k]))
    else o[k] = copyParsed(x[k])
  }
  return o
}

// Parsed values of recent single-key cached gets, by company/type/id, each with the text it was
// parsed from. The addon still answers every get: a memo is used only when the text it returns
// now is the very same, so the memo can never be stale; the caller gets a copy. JSON.parse of
// one Signal session record took 3-7 us, most of a cached get. A value is kept the second time
// the same text is read (the first read of a text costs no more than before: the get, set, get
// of Baileys' decrypt loop changes the text every time), and at most MEMO_MAX values are kept.
const MEMO_MAX = 1024
const memo = new Map() // key -> { text, value (null until the text was read twice) }

function parseMemo (key, text) {
  const m = memo.get(key)
  if (m !== undefined && m.text === text) {
    if (m.value === null) m.value = parse(text)
    return copyParsed(m.value)
  }
  if (m !== undefined) {
    // A new text for the key (every get after a set): the entry is reused in place.
    m.text = text
    m.value = null
  } else {
    if (memo.size >= MEMO_MAX) memo.delete(memo.keys().next().value)
    memo.set(key, { text, value: null })
  }
  return parse(text)
}

// A get's JSON text -> {id: value}; app-state-sync-key values become protobuf objects
// (fromObject, never create: create leaves keyData a string and breaks app-state sync).
function reviveGot (type, text) {
  return reviveValues(type, parse(text))
}

async function reviveValues (type, out) {
  if (type === 'app-state-sync-key') {
    const B = await loadBaileys()
    for (const id of Object.keys(out)) out[id] = B.proto.Message.AppStateSyncKeyData.fromObject(out[id])
  }
  return out
}

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) &&
  !(v instanceof Uint8Array)

// {type: {id: value|null}} -> [types, ids, values]: parallel lists, each value as its own JSON
// text (null deletes), checked on its own so the error names it. The core keeps text that is
// canonical as written without parsing it again.
// `undefined` deletes, like null (what Baileys' own stores do with a falsy value).
function writesToLists (data) {
  if (!isPlainObject(data)) throw invalid('set: the argument must be an object {type: {id: value | null}}')
  const types = []
  const ids = []
  const values = []
  for (const type of Object.keys(data)) {
    const entries = data[type]
    if (entries === null || entries === undefined) continue
    if (!isPlainObject(entries)) throw invalid(`set: data[${JSON.stringify(type)}] must be an object {id: value | null}`)
    for (const id of Object.keys(entries)) {
      const v = entries[id]
      types.push(type)
      ids.push(id)
      values.push(v === null || v === undefined ? null : stringify(v, `set: value of ${type}/${id}`))
    }
  }
  return [types, ids, values]
}

// Runs a native call: synchronous throws and rejections both come out as coded errors.
function call (fn) {
  let p
  try {
    p = fn()
  } catch (e) {
    return Promise.reject(toAuthError(e))
  }
  return Promise.resolve(p).catch((e) => { throw toAuthError(e) })
}

function syncCall (fn) {
  try {
    return fn()
  } catch (e) {
    throw toAuthError(e)
  }
}

// A get of many ids comes in parts as PostgreSQL sends the rows, and each part is parsed while
// the next ones arrive: JSON.parse of 1,000 session records (~1 MB) took as long as their query,
// after it. Smaller gets are one part anyway.
const PARTS_FROM = 64
const PART_ROWS = 100

// Each part is a flat array ["id", value, "id", value, ...] (see the core's `json_pairs`): as an
// object, every part's new ids would each make JSON.parse build a hidden class, only to be
// copied into the answer.
async function getInParts (nativeSession, type, ids) {
  const parts = nativeSession.getParts(type, ids, PART_ROWS)
  const out = {}
  // The next part is asked for before this one is parsed, so its hop from the runtime's thread
  // overlaps the parse instead of following it.
  let next = parts.next()
  for (;;) {
    const text = await next
    if (text == null) break
    next = parts.next()
    let pairs
    try {
      pairs = parse(text)
    } catch (e) {
      next.catch(() => {}) // the get fails here; what comes after is not wanted
      throw e
    }
    for (let i = 0; i < pairs.length; i += 2) {
      const id = pairs[i]
      if (id === '__proto__') defineProto(out, pairs[i + 1])
      else out[id] = pairs[i + 1]
    }
  }
  return out
}

// ---- write outcomes ---------------------------------------------------------------------------
// A write (set, saveCreds, clear) is validated and enqueued by a synchronous native call that
// carries a ticket number, and its promise waits here for the ticket's outcome. The addon hands
// outcomes over in batches: one wake-up of this thread for all the outcomes learnt meanwhile,
// not one threadsafe function and hop per call (node/src/lib.rs, `Outcomes`).

const waiting = new Map() // ticket -> { resolve, reject, session, value }
let lastTicket = 0

// The addon's wake-up handle does not keep Node alive (a store would keep the process running
// forever); this timer does, while a write is pending, as a pending native promise would.
const keepAlive = setInterval(() => {}, 0x7fffffff)
keepAlive.unref()

function nextTicket () {
  do lastTicket = (lastTicket + 1) >>> 0
  while (waiting.has(lastTicket))
  return lastTicket
}

// The promise of an enqueued write; it resolves to `value`.
function awaitTicket (ticket, session, value) {
  return new Promise((resolve, reject) => {
    if (waiting.size === 0) keepAlive.ref()
    waiting.set(ticket, { resolve, reject, session, value })
    session._inflight++
  })
}

// The addon's batch: tickets in the order their outcomes were learnt, errors[i] the coded Error
// of tickets[i] when it failed. Must not throw (it runs from the addon's wake-up).
function onWritten (tickets, errors) {
  for (let i = 0; i < tickets.length; i++) {
    const w = waiting.get(tickets[i])
    if (w === undefined) continue
    waiting.delete(tickets[i])
    const e = errors[i]
    if (e === undefined) {
      w.resolve(w.value)
    } else {
      const err = toAuthError(e)
      try {
        w.session._failed(err)
      } catch (thrown) {
        // a throwing 'lost' listener: reported like any listener's throw, after the batch settles
        process.nextTick(() => { throw thrown })
      }
      w.reject(err)
    }
    w.session._settled()
  }
  if (waiting.size === 0) keepAlive.unref()
}

// ---- Session ------------------------------------------------------------------------------

class Session {
  constructor (nativeSession, store) {
    this._native = nativeSession
    this._store = store
    this._closed = false
    this._lost = false
    this._inflight = 0 // writes enqueued, outcome not yet here
    this._idle = [] // close()'s waits for _inflight to reach 0
    this.companyId = nativeSession.companyId
    this._memoKey = `${this.companyId}\0` // this session's keys in the parsed-value memo
  }

  // LOCKED on a call of an open session means its lease was taken over (fenced): tell the
  // service once, as store 'lost' events, so it can stop this account's socket.
  _failed (e) {
    if (e && e.code === 'EAUTHSTATE_LOCKED' && !this._lost && this._store) {
      this._lost = true
      this._store.emit('lost', { companyId: this.companyId, message: e.message })
    }
  }

  _watch (p) {
    return p.catch((e) => {
      this._failed(e)
      throw e
    })
  }

  _settled () {
    if (--this._inflight === 0) for (const done of this._idle.splice(0)) done()
  }

  _check () {
    if (this._closed) throw new AuthStateError('EAUTHSTATE_CLOSED', `session ${this.companyId} is closed`)
  }

  // A write: `begin(ticket)` validates and enqueues it synchronously (it throws when nothing
  // was enqueued, returns false when there was nothing to write), and the promise settles with
  // the outcome reported for the ticket (see onWritten).
  _write (begin, value) {
    try {
      this._check()
      const ticket = nextTicket()
      if (begin(ticket) === false) return Promise.resolve(false)
      return awaitTicket(ticket, this, value)
    } catch (e) {
      const err = toAuthError(e)
      this._failed(err)
      return Promise.reject(err)
    }
  }

  loadCreds () {
    return call(() => {
      this._check()
      return this._native.loadCreds()
    }).then((text) => (text == null ? null : parse(text)))
  }

  saveCreds (creds) {
    return this._write((ticket) => {
      if (!isPlainObject(creds)) throw invalid('saveCreds: creds must be an object')
      return this._native.saveCreds(stringify(creds, 'saveCreds: creds'), ticket)
    }, true)
  }

  get (type, ids) {
    let cached
    try {
      this._check()
      if (typeof type !== 'string') throw invalid('get: type must be a string')
      if (!Array.isArray(ids)) throw invalid('get: ids must be an array of strings')
      for (const id of ids) if (typeof id !== 'string') throw invalid(`get: ids must be strings, got ${typeof id}`)
      // Answered from memory without an async hop when every id is cached (the hot path of
      // every Signal message: no promise chain beyond the one returned).
      cached = this._native.getCached(type, ids)
      if (cached != null && type !== 'app-state-sync-key') {
        return Promise.resolve(ids.length === 1 ? parseMemo(`${this._memoKey}${type}\0${ids[0]}`, cached) : parse(cached))
      }
    } catch (e) {
      return this._watch(Promise.reject(toAuthError(e)))
    }
    return call(() => {
      if (cached != null) return parse(cached)
      if (ids.length >= PARTS_FROM) return getInParts(this._native, type, ids)
      return this._native.get(type, ids).then(parse)
    }).then((out) => reviveValues(type, out), (e) => this._watch(Promise.reject(e)))
  }

  set (data) {
    return this._write((ticket) => {
      const [types, ids, values] = writesToLists(data)
      this._native.set(types, ids, values, ticket)
    })
  }

  clear () {
    return this._write((ticket) => { this._native.clear(ticket) })
  }

  // Waits for this session's own pending writes, then refuses further calls.
  async close () {
    if (this._closed) return
    this._closed = true
    if (this._inflight > 0) await new Promise((resolve) => this._idle.push(resolve))
  }
}

// ---- Store --------------------------------------------------------------------------------

// Keys per page of Store.listKeys / listKeyIds.
const LIST_PAGE = 500

class Store {
  constructor (nativeStore) {
    this._native = nativeStore
  }

  migrate () {
    return call(() => this._native.migrate()).then((t) => JSON.parse(t))
  }

  session (companyId) {
    return call(() => {
      if (typeof companyId !== 'string') throw invalid('session: companyId must be a string')
      return this._native.session(companyId)
    }).then((s) => new Session(s, this))
  }

  metrics () {
    return JSON.parse(syncCall(() => this._native.metrics()))
  }

  // Statistics of one company (or, without one, of the whole database): keys per type,
  // bytes, oldest/newest update, expired counts.
  stats (companyId) {
    return call(() => {
      if (companyId !== undefined && typeof companyId !== 'string') throw invalid('stats: companyId must be a string')
      return this._native.stats(companyId)
    }).then((t) => JSON.parse(t))
  }

  // Every key of one type of a company as [id, value] pairs, fetched in pages (ordered by id),
  // so a type of any size never sits in memory at once. Values are revived like get's.
  async * listKeys (companyId, type, pageSize = LIST_PAGE) {
    let after = null
    do {
      const page = await call(() => this._native.listPage(companyId, type, after, pageSize, true))
      const values = await reviveGot(type, page.json)
      for (const id of Object.keys(values)) yield [id, values[id]]
      after = page.next ?? null
    } while (after !== null)
  }

  // Every key id of one type of a company, fetched in pages (ordered by id).
  async * listKeyIds (companyId, type, pageSize = LIST_PAGE) {
    let after = null
    do {
      const page = await call(() => this._native.listPage(companyId, type, after, pageSize, false))
      yield * JSON.parse(page.json)
      after = page.next ?? null
    } while (after !== null)
  }

  close () {
    return call(() => this._native.close()).then((t) => JSON.parse(t))
  }
}

function openStore (options = {}) {
  return call(() => {
    if (!isPlainObject(options)) throw invalid('openStore: options must be an object')
    return native.openStore(stringify(options, 'openStore: options'), onWritten)
  }).then((s) => new Store(s))
}

// Drop-in for Baileys' useMultiFileAuthState: { state: { creds, keys }, saveCreds }.
async function usePostgresAuthState (store, companyId) {
  if (!(store instanceof Store)) throw invalid('usePostgresAuthState: store must come from openStore()')
  const session = await store.session(companyId)
  const stored = await session.loadCreds()
  const creds = stored || (await loadBaileys()).initAuthCreds()
  return {
    state: {
      creds,
      keys: {
        get: (type, ids) => session.get(type, ids),
        set: (data) => session.set(data),
        clear: () => session.clear(),
        // Baileys' optional key-store listing (its migrateAuthState helper): streamed pages.
        list: (type) => store.listKeys(companyId, type),
        listIds: (type) => store.listKeyIds(companyId, type)
      }
    },
    saveCreds: () => session.saveCreds(creds),
    session
  }
}

// ---- Drop-in for the old module (auth-state-timeweb.js) -------------------------------------

let shared // Promise<Store> while opening or open
let sharedOpen = null // the Store once open, for the synchronous getQueryMetrics

// The one store of this process for the one-line form: opened from DATABASE_URL / PG* and
// migrated once, on first use. A failed open is not cached: the next call tries again.
function sharedStore () {
  if (!shared) {
    shared = openStore().then(async (store) => {
      try {
        await store.migrate()
      } catch (e) {
        await store.close().catch(() => {})
        throw e
      }
      sharedOpen = store
      return store
    })
    shared.catch(() => { shared = undefined })
  }
  return shared
}

// Closes the shared store (flushing pending writes); the next one-line call opens a new one.
async function closeSharedStore () {
  const p = shared
  shared = undefined
  sharedOpen = null
  if (!p) return null
  let store
  try {
    store = await p
  } catch {
    return null
  }
  return store.close()
}

// The old module's one-line form. Its `options.sessionPool` (a credentials cache for
// outages) is not needed: the store serves reads from memory during an outage itself.
async function useTimewebAuthState (companyId, options) {
  return usePostgresAuthState(await sharedStore(), companyId)
}

// Deletes all of one company's auth state (creds and every key), as the old module did.
async function removeTimewebAuthState (companyId) {
  const session = await (await sharedStore()).session(companyId)
  await session.clear()
}

// The old module's statistics of the whole database (companies' keys per type, bytes,
// expired keys), through the shared store.
async function getAuthStateStats () {
  return (await sharedStore()).stats()
}

// The old module's query metrics: per query kind counts, errors, slow calls and latency
// percentiles, plus pool, cache and outage state (the core's in-memory snapshot, no database
// work). null while no shared store is open.
function getQueryMetrics () {
  return sharedOpen ? sharedOpen.metrics() : null
}

// ---- Health (issue 12): store.health(), store.on('alert', fn), store.prometheus() --------
// Alerts are raised in the core (a check changed state, with per-kind cooldowns); this block
// only hands them to listeners. While an 'alert' listener exists, a timer (unref'd: it never
// keeps the process alive) polls the core's queue every ALERT_POLL_MS; `health()` also
// delivers the alerts it raised before it resolves.

const { EventEmitter } = require('node:events')

const ALERT_POLL_MS = 1000
Object.setPrototypeOf(Store.prototype, EventEmitter.prototype)

Store.prototype._drainAlerts = function () {
  if (this.listenerCount('alert') === 0) return
  for (let text = this._native.pollAlert(); text != null; text = this._native.pollAlert()) {
    this.emit('alert', JSON.parse(text))
  }
}

// Starts the poll timer with the first 'alert' listener (`once` goes through `on`); the timer
// stops itself once no listener is left.
Store.prototype._watchAlerts = function (event) {
  if (event !== 'alert' || this._alertTimer || this._healthClosed) return
  this._alertTimer = setInterval(() => {
    if (this.listenerCount('alert') === 0) {
      clearInterval(this._alertTimer)
      this._alertTimer = undefined
      return
    }
    try {
      this._drainAlerts()
    } catch (e) {
      // An 'error' event without a listener would throw from the timer and end the process.
      if (this.listenerCount('error') > 0) this.emit('error', toAuthError(e))
    }
  }, ALERT_POLL_MS)
  this._alertTimer.unref()
}

for (const method of ['on', 'addListener']) {
  const base = EventEmitter.prototype[method]
  Store.prototype[method] = function (event, listener) {
    base.call(this, event, listener)
    this._watchAlerts(event)
    return this
  }
}

Store.prototype.health = function () {
  return call(() => this._native.health()).then((text) => {
    this._drainAlerts()
    return JSON.parse(text)
  })
}

Store.prototype.prometheus = function () {
  return syncCall(() => this._native.prometheus())
}

const closeWithoutAlerts = Store.prototype.close
Store.prototype.close = function () {
  this._healthClosed = true
  if (this._alertTimer) clearInterval(this._alertTimer)
  this._alertTimer = undefined
  return closeWithoutAlerts.call(this)
}

/** The Content-Type of `store.prometheus()`'s text (OpenMetrics 1.0). */
const PROMETHEUS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8'

module.exports = {
  PROMETHEUS_CONTENT_TYPE,
  openStore,
  usePostgresAuthState,
  useTimewebAuthState,
  removeTimewebAuthState,
  getQueryMetrics,
  getAuthStateStats,
  sharedStore,
  closeSharedStore,
  AuthStateError,
  ERROR_CODES,
  bufferReplacer,
  bufferReviver,
  Store,
  Session,
  native,
  __toAuthError: toAuthError,
  __json: { stringify, parse, copyParsed }
}
