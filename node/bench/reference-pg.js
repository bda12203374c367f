'use strict'
// Reference implementation of the service's old JS module, written from its description:
// node-postgres `pg`, creds/keys in the same tables, buffers revived in JS, keys.set as multi-row
// INSERT ... ON CONFLICT in batches of 100 (one transaction per set), keys.get with key_id = ANY($3).
// Used only by the benchmark as the baseline.

const TTL_DAYS = { 'lid-mapping': 7, 'pre-key': 7, session: 7, 'sender-key': 7 }

function revive (v) {
  if (Array.isArray(v)) return v.map(revive)
  if (v && typeof v === 'object') {
    if (v.type === 'Buffer' && typeof v.data === 'string') return Buffer.from(v.data, 'base64')
    if (v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data)
    if (v.buffer === true && v.value !== undefined) return Buffer.from(v.value, typeof v.value === 'string' ? 'base64' : undefined)
    const keys = Object.keys(v)
    if (keys.length > 0 && keys.every((k) => !isNaN(parseInt(k, 10))) && keys.every((k) => typeof v[k] === 'number')) {
      return Buffer.from(Object.values(v))
    }
    for (const k of keys) v[k] = revive(v[k])
  }
  return v
}

function makeReference (pool, B) {
  const replacer = B.BufferJSON.replacer
  return async function useReferenceAuthState (companyId) {
    const r = await pool.query('SELECT creds FROM whatsapp_auth WHERE company_id = $1', [companyId])
    const creds = r.rows.length ? revive(r.rows[0].creds) : B.initAuthCreds()
    const keys = {
      async get (type, ids) {
        const out = {}
        if (!ids.length) return out
        const { rows } = await pool.query(
          'SELECT key_id, value FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3)',
          [companyId, type, ids])
        for (const row of rows) {
          let v = revive(row.value)
          if (type === 'app-state-sync-key') v = B.proto.Message.AppStateSyncKeyData.fromObject(v)
          out[row.key_id] = v
        }
        return out
      },
      async set (data) {
        const client = await pool.connect()
        try {
          await client.query('BEGIN')
          for (const [type, entries] of Object.entries(data)) {
            const ups = []
            const dels = []
            for (const [id, v] of Object.entries(entries || {})) {
              if (v === null || v === undefined) dels.push(id)
              else ups.push([id, JSON.stringify(v, replacer)])
            }
            if (dels.length) {
              await client.query('DELETE FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3)',
                [companyId, type, dels])
            }
            const days = TTL_DAYS[type] || 14
            for (let i = 0; i < ups.length; i += 100) {
              const batch = ups.slice(i, i + 100)
              const params = [companyId, type]
              const values = batch.map(([id, json]) => {
                params.push(id, json)
                return `($1, $2, $${params.length - 1}, $${params.length}::jsonb, now(), now() + interval '${days} days')`
              })
              await client.query(
                `INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) VALUES ${values.join(',')}
                 ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET value = EXCLUDED.value,
                   updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at`, params)
            }
          }
          await client.query('COMMIT')
        } catch (e) {
          await client.query('ROLLBACK').catch(() => {})
          throw e
        } finally {
          client.release()
        }
      }
    }
    const saveCreds = () => pool.query(
      `INSERT INTO whatsapp_auth (company_id, creds, updated_at) VALUES ($1, $2::jsonb, now())
       ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds, updated_at = now()`,
      [companyId, JSON.stringify(creds, replacer)])
    return { state: { creds, keys }, saveCreds }
  }
}

module.exports = { makeReference, revive }
