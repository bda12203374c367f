// Type-checked (not run) by test/package.test.js against the installed package: ESM users.
import makeWASocket, { type AuthenticationState } from 'baileys'
import { openStore, usePostgresAuthState, AuthStateError, removeTimewebAuthState, type Store } from 'authstate'

const store: Store = await openStore({ outagePolicy: 'buffer' })
const { state, saveCreds } = await usePostgresAuthState(store, 'acme')
const auth: AuthenticationState = state
const sock = makeWASocket({ auth })
sock.ev.on('creds.update', saveCreds)
try {
  await removeTimewebAuthState('acme')
} catch (e: unknown) {
  if (e instanceof AuthStateError && e.code === 'EAUTHSTATE_UNAVAILABLE') console.log(e.sqlstate)
}
