'use strict'
// Baileys' own useMultiFileAuthState, unchanged except that keys.get leaves missing keys out
// instead of answering `null` for them (what every other store, this addon included, does).
// The shared test helper signal.js destructures answers with defaults (`= {}`), which apply to
// missing keys only; Baileys' socket itself treats both the same.
const path = require('node:path')

async function folderAuth (B, dir, company) {
  const auth = await B.useMultiFileAuthState(path.join(dir, company))
  const get = auth.state.keys.get
  auth.state.keys.get = async (type, ids) =>
    Object.fromEntries(Object.entries(await get(type, ids)).filter(([, v]) => v !== null && v !== undefined))
  return auth
}

module.exports = { folderAuth }
