// ES module entry: the same objects as the CommonJS entry (index.js), as named exports.
// test/esm.test.js fails when this list and index.js's exports differ.
import cjs from './index.js'

export const {
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
  PROMETHEUS_CONTENT_TYPE,
  bufferReplacer,
  bufferReviver,
  Store,
  Session,
  native,
  __toAuthError,
  __json
} = cjs

export default cjs
