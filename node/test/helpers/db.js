'use strict'
// A fresh PostgreSQL database for one test file (or one benchmark run).
//  - DATABASE_URL set: a new database `authstate_t_<random>` is created on that server and
//    dropped afterwards.
//  - otherwise: `target/<profile>/authstate tempdb` starts a throwaway cluster (it prints one
//    JSON line with its url and runs until its stdin closes), and a new database is created in it.
const { spawn, spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')

const ROOT = path.resolve(__dirname, '..', '..', '..')

function targetDir () {
  if (process.env.CARGO_TARGET_DIR) return path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
  return path.join(ROOT, 'target')
}

function authstateBinary () {
  if (process.env.AUTHSTATE_BIN) return process.env.AUTHSTATE_BIN
  const candidates = ['debug', 'release'].map((p) => path.join(targetDir(), p, 'authstate'))
    .filter((f) => fs.existsSync(f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)
  if (candidates.length) return candidates[0]
  const r = spawnSync('cargo', ['build', '--bin', 'authstate'], { cwd: ROOT, stdio: 'inherit' })
  if (r.status !== 0) throw new Error('cannot build the authstate binary for `authstate tempdb`')
  return path.join(targetDir(), 'debug', 'authstate')
}

function startTempCluster () {
  return new Promise((resolve, reject) => {
    const bin = authstateBinary()
    const child = spawn(bin, ['tempdb'], { stdio: ['pipe', 'pipe', 'inherit'] })
    const rl = readline.createInterface({ input: child.stdout })
    let done = false
    const timer = setTimeout(() => {
      if (!done) { done = true; child.kill('SIGTERM'); reject(new Error(`${bin} tempdb printed nothing in 60 s`)) }
    }, 60000)
    child.on('error', (e) => { if (!done) { done = true; clearTimeout(timer); reject(e) } })
    child.on('exit', (code) => {
      if (!done) { done = true; clearTimeout(timer); reject(new Error(`${bin} tempdb exited with ${code} before printing its url`)) }
    })
    rl.on('line', (line) => {
      if (done) return
      let info
      try { info = JSON.parse(line) } catch { return }
      done = true
      clearTimeout(timer)
      const stop = () => new Promise((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once('exit', () => resolve())
        child.stdin.end()
        setTimeout(() => child.kill('SIGTERM'), 10000).unref()
      })
      resolve({ info, child, stop })
    })
  })
}

function withDatabase (url, db) {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    // libpq key=value form
    return /\bdbname=\S+/.test(url) ? url.replace(/\bdbname=\S+/, `dbname=${db}`) : `${url} dbname=${db}`
  }
  const u = new URL(url)
  u.pathname = '/' + db
  return u.toString()
}

async function admin (url, sql) {
  const { Client } = require('pg')
  const c = new Client({ connectionString: url })
  await c.connect()
  try { return await c.query(sql) } finally { await c.end() }
}

// Stops / starts the server of a throwaway cluster (info: what `authstate tempdb` printed).
// pg_ctl waits (-w) until the server is down / accepting connections.
function pgCtl (info, args) {
  const [cmd, ...rest] = info.pg_ctl
  const r = spawnSync(cmd, [...rest, ...args], { encoding: 'utf8', timeout: 120000 })
  if (r.status !== 0) {
    throw new Error(`pg_ctl ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout || r.error}`)
  }
}
const stopServer = (info) => pgCtl(info, ['-m', 'immediate', '-w', 'stop'])
const startServer = (info) => pgCtl(info, ['-l', path.join(info.data_dir, '..', 'server.log'), '-w', 'start'])

// -> { url, query(sql, params), close(), cluster? }
// opts.ownCluster: always start a throwaway cluster, even when DATABASE_URL is set (for tests
// that stop and start the server); then `stopServer()` / `startServer()` are available.
async function freshDatabase (opts = {}) {
  let serverUrl = opts.ownCluster ? undefined : process.env.DATABASE_URL
  let cluster
  if (!serverUrl) {
    cluster = await startTempCluster()
    serverUrl = cluster.info.tcp_url || cluster.info.url
  }
  const name = 'authstate_t_' + crypto.randomBytes(6).toString('hex')
  await admin(serverUrl, `CREATE DATABASE ${name}`)
  const url = withDatabase(serverUrl, name)
  const { Pool } = require('pg')
  const pool = new Pool({ connectionString: url, max: 2 })
  // An idle client whose server went away emits 'error' on the pool: not a crash.
  pool.on('error', () => {})
  return {
    url,
    name,
    cluster,
    stopServer: cluster ? () => stopServer(cluster.info) : undefined,
    startServer: cluster ? () => startServer(cluster.info) : undefined,
    query: (sql, params) => pool.query(sql, params),
    async close () {
      await pool.end()
      try {
        await admin(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } catch {}
      if (cluster) await cluster.stop()
    }
  }
}

module.exports = { freshDatabase, startTempCluster, stopServer, startServer, authstateBinary, targetDir, ROOT }
