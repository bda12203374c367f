// Compiled (not run) by test/dts.test.js: the package must type-check against Baileys' own types.
import makeWASocket, { type AuthenticationState, type SignalDataTypeMap } from 'baileys'
import { openStore, usePostgresAuthState, AuthStateError, type Store, type Session } from '../../index.js'

async function main (): Promise<void> {
  const store: Store = await openStore({ url: process.env.DATABASE_URL, poolSize: 5, outagePolicy: 'buffer', ttlMs: { default: 1000, session: 5000 } })
  await store.migrate()
  const { state, saveCreds } = await usePostgresAuthState(store, 'company_1')
  const auth: AuthenticationState = state
  const sock = makeWASocket({ auth })
  sock.ev.on('creds.update', saveCreds)
  const s: Session = await store.session('company_1')
  const preKeys: { [id: string]: SignalDataTypeMap['pre-key'] } = await s.get('pre-key', ['1'])
  await s.set({ 'pre-key': { 1: preKeys['1'], 2: null } })
  const written: boolean = await s.saveCreds(state.creds)
  try {
    await s.clear()
  } catch (e: unknown) {
    if (e instanceof AuthStateError && e.code === 'EAUTHSTATE_UNAVAILABLE') console.log(written)
  }
  console.log(store.metrics())
  await store.close()
}
void main
