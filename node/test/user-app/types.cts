// Type-checked (not run) by test/package.test.js against the installed package: CommonJS users.
import authstate = require('authstate')
import type { AuthenticationState } from 'baileys'

export async function main (): Promise<void> {
  const store: authstate.Store = await authstate.openStore({ url: process.env.DATABASE_URL, poolSize: 4 })
  const { state, saveCreds } = await authstate.usePostgresAuthState(store, 'acme')
  const auth: AuthenticationState = state
  const written: boolean = await saveCreds()
  const code: authstate.AuthStateErrorCode = 'EAUTHSTATE_UNAVAILABLE'
  const old = await authstate.useTimewebAuthState('acme')
  console.log(auth, written, code, old.state.creds.registrationId, authstate.getQueryMetrics())
}
