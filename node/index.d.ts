// Types of the `authstate` Node package. test/dts.test.js fails when this file drifts from the
// native exports (node/src/lib.rs) or from index.js.
import type {
  AuthenticationCreds,
  AuthenticationState,
  SignalDataSet,
  SignalDataTypeMap
} from 'baileys'

/** Stable error codes, derived from the core's `Error::code()`. */
export type AuthStateErrorCode =
  | 'EAUTHSTATE_INVALID'
  | 'EAUTHSTATE_NOT_FOUND'
  | 'EAUTHSTATE_UNAVAILABLE'
  | 'EAUTHSTATE_TIMEOUT'
  | 'EAUTHSTATE_READ_ONLY'
  | 'EAUTHSTATE_BACKLOG'
  | 'EAUTHSTATE_LOCKED'
  | 'EAUTHSTATE_MIGRATION'
  | 'EAUTHSTATE_DATABASE'
  | 'EAUTHSTATE_CLOSED'
  | 'EAUTHSTATE_INTERNAL'

export declare const ERROR_CODES: readonly AuthStateErrorCode[]

/** Every error this package throws or rejects with. */
export declare class AuthStateError extends Error {
  constructor(code: AuthStateErrorCode, message: string, options?: { cause?: unknown })
  readonly code: AuthStateErrorCode
}

export interface OpenStoreOptions {
  /** postgres:// URL or libpq key=value string; default: DATABASE_URL or the PG* variables. */
  url?: string
  /** Most connections in the pool (default 20). */
  poolSize?: number
  /** Default 5000. */
  connectTimeoutMs?: number
  /** Default 30000. */
  statementTimeoutMs?: number
  /** Idle connections are closed after this long; 0 = never (default 600000). */
  idleTimeoutMs?: number
  /** Coalesce concurrent writes into shared commits (default true). */
  groupCommit?: boolean
  /** Parallel writer lanes (default 2); one company always uses the same lane. */
  writeLanes?: number
  /** Read cache bound in entries (default 200000). */
  cacheMaxEntries?: number
  /** Read cache bound in bytes of value text (default 256 MiB). */
  cacheMaxBytes?: number
  /** What writes do while PostgreSQL is unreachable (default 'buffer'). */
  outagePolicy?: 'buffer' | 'read-only'
  /** Append-only journal for writes accepted during an outage. */
  journalPath?: string
  /** Bound on writes kept during an outage, bytes (default 64 MiB). */
  maxPendingBytes?: number
  sslMode?: 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full'
  sslRootCert?: string
  /** TTL in ms: `default` for types without their own entry, and per key type. */
  ttlMs?: { default?: number } & { [keyType: string]: number | undefined }
  // One writer per company (issue 11).
  /** Hold a lease per company: a second process gets EAUTHSTATE_LOCKED (default true). */
  lease?: boolean
  /** A dead holder's lease is free after this long (default 30000). */
  leaseExpiryMs?: number
  /** Held leases are renewed this often, one statement for all (default 10000). */
  leaseHeartbeatMs?: number
  /** Where outage writes that lost their lease are written (default `<journalPath>.lost`). */
  lostWritesPath?: string
}

export interface MigrationReport {
  applied: number[]
  alreadyApplied: number[]
}

/** The core's close report: what was flushed and what could not be. */
export type CloseReport = Record<string, unknown>

/** The core's in-memory metrics snapshot (per query kind, pool, cache, outage). */
export type MetricsSnapshot = Record<string, unknown>

export type KeyType = keyof SignalDataTypeMap | (string & {})

export declare class Session {
  private constructor()
  readonly companyId: string
  /** The stored creds (buffers as Buffer), or null. */
  loadCreds(): Promise<AuthenticationCreds | null>
  /** Resolves true when written, false when unchanged (nothing written). */
  saveCreds(creds: AuthenticationCreds | Record<string, unknown>): Promise<boolean>
  /** Missing ids are absent from the answer. */
  get<T extends keyof SignalDataTypeMap>(type: T, ids: string[]): Promise<{ [id: string]: SignalDataTypeMap[T] }>
  get(type: string, ids: string[]): Promise<{ [id: string]: unknown }>
  /** null deletes; atomic; calls take effect in call order. */
  set(data: SignalDataSet | { [type: string]: { [id: string]: unknown } }): Promise<void>
  /** Deletes every key and the creds of this company. */
  clear(): Promise<void>
  /** Waits for this session's pending writes, then refuses further calls. */
  close(): Promise<void>
}

export declare class Store {
  private constructor()
  migrate(): Promise<MigrationReport>
  session(companyId: string): Promise<Session>
  metrics(): MetricsSnapshot
  close(): Promise<CloseReport>
}

export declare function openStore(options?: OpenStoreOptions): Promise<Store>

export interface PostgresAuthState {
  state: AuthenticationState
  saveCreds: () => Promise<boolean>
  session: Session
}

/** Drop-in for Baileys' useMultiFileAuthState; creds from initAuthCreds() when none stored. */
export declare function usePostgresAuthState(store: Store, companyId: string): Promise<PostgresAuthState>

/** JSON.stringify replacer: Buffer/Uint8Array -> {type:'Buffer', data:<base64>}. */
export declare function bufferReplacer(this: unknown, key: string, value: unknown): unknown
/** JSON.parse reviver: {type:'Buffer', data:<base64>} -> Buffer. */
export declare function bufferReviver(key: string, value: unknown): unknown

/** The raw native binding (node/src/lib.rs). Values cross as JSON text. */
export interface NativeStore {
  migrate(): Promise<string>
  session(companyId: string): Promise<NativeSession>
  metrics(): string
  close(): Promise<string>
}

export interface NativeSession {
  readonly companyId: string
  loadCreds(): Promise<string | null>
  saveCreds(credsJson: string): Promise<boolean>
  get(keyType: string, ids: string[]): Promise<string>
  /** Synchronous: the answer when every id is in memory, else null (then call `get`). */
  getCached(keyType: string, ids: string[]): string | null
  set(writesJson: string): Promise<void>
  clear(): Promise<void>
}

export interface NativeBinding {
  openStore(optionsJson: string): Promise<NativeStore>
  errorCode(coreCode: string): AuthStateErrorCode
  testPanic(inPromise: boolean): Promise<void> | null
  NativeStore: { prototype: NativeStore }
  NativeSession: { prototype: NativeSession }
}

export declare const native: NativeBinding

/** @internal converts any error to an AuthStateError */
export declare function __toAuthError(e: unknown): AuthStateError
