import { makeWASocket } from 'baileys'
import { openStore, usePostgresAuthState } from 'authstate'

const store = await openStore() // DATABASE_URL or the PG* variables; options: index.d.ts
await store.migrate() // applies what is missing, safe on every start
const { state, saveCreds } = await usePostgresAuthState(store, 'acme')

const sock = makeWASocket({ auth: state })
sock.ev.on('creds.update', saveCreds)
process.once('SIGTERM', async () => {
  sock.end(undefined)
  await store.close() // flushes writes kept during an outage, or reports what it could not
})
