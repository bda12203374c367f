'use strict'
// Installs like a user: packs the npm packages (scripts/pack.js), then in a new empty folder,
// with a PATH that has no cargo or rustc, `npm install`s the tarballs plus Baileys from the
// registry and runs a CommonJS and an ES module Baileys program (test/user-app/) and the
// README's Node example against a throwaway PostgreSQL; type-checks CommonJS and ESM usage
// against the installed types; and checks what the loader says when no binary fits.
//
// The README example is run up to, and not including, `makeWASocket(...)`: a socket connects
// to WhatsApp, which a test cannot reach. The test then closes the store as the example's
// shutdown does. The whole example, socket included, is type-checked against Baileys' types.
const test = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const ts = require('typescript')
const { packAll } = require('../scripts/pack.js')
const { freshDatabase } = require('./helpers/db.js')

const BAILEYS = 'baileys@7.0.0-rc14'
const USER_APP = path.join(__dirname, 'user-app')
const EXAMPLE = path.join(__dirname, '..', 'examples', 'readme.mjs')

// PATH without the directories that hold cargo or rustc (a machine without Rust), and no npm_*
// variables from an enclosing `npm run`.
function userEnv (extra) {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter((d) => d &&
    !['cargo', 'rustc'].some((tool) => fs.existsSync(path.join(d, tool))))
  const env = { ...process.env, PATH: dirs.join(path.delimiter), ...extra }
  for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k]
  return env
}

function run (cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 600000, ...opts })
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}${r.error ? ` (${r.error.message})` : ''}\n${r.stdout}\n${r.stderr}`)
  }
  return r.stdout
}

function typeErrors (files) {
  const program = ts.createProgram(files, {
    noEmit: true,
    strict: true,
    allowJs: true,
    checkJs: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    types: ['node'],
    typeRoots: [path.join(__dirname, '..', 'node_modules', '@types')]
  })
  return ts.getPreEmitDiagnostics(program)
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n') + (d.file ? ` (${path.basename(d.file.fileName)})` : ''))
}

test('installs like a user: packed tarballs + Baileys from npm, no cargo, CJS and ESM', { timeout: 900000 }, async (t) => {
  const db = await freshDatabase()
  t.after(() => db.close())
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-user-'))
  if (!process.env.AUTHSTATE_KEEP_TMP) t.after(() => fs.rmSync(work, { recursive: true, force: true }))

  const { packages } = packAll(path.join(work, 'tarballs'))
  t.diagnostic(JSON.stringify(packages.map(({ name, size, unpackedSize, files }) => ({ name, size, unpackedSize, files }))))
  const [main, ...platforms] = packages
  assert.equal(main.name, 'authstate')
  assert.ok(platforms.some((p) => p.name === 'authstate-linux-x64-gnu'), 'the production platform is packed')
  assert.ok(!main.files.some((f) => f.endsWith('.node')), 'no binary in the main package')

  const app = path.join(work, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({
    name: 'user-app', version: '1.0.0', private: true, overrides: { libsignal: 'npm:libsignal@6.0.0' }
  }, null, 2))
  const env = userEnv({ DATABASE_URL: db.url })
  assert.equal(spawnSync('cargo', ['--version'], { env }).error?.code, 'ENOENT', 'cargo is not on the PATH')
  assert.equal(spawnSync('rustc', ['--version'], { env }).error?.code, 'ENOENT', 'rustc is not on the PATH')
  run('npm', ['install', '--no-audit', '--no-fund', ...packages.map((p) => p.tarball), BAILEYS], { cwd: app, env })

  const installed = JSON.parse(fs.readFileSync(path.join(app, 'node_modules', 'authstate', 'package.json'), 'utf8'))
  assert.equal(installed.version, main.version)
  assert.ok(fs.existsSync(path.join(app, 'node_modules', 'authstate-linux-x64-gnu', 'authstate.linux-x64-gnu.node')))

  for (const f of fs.readdirSync(USER_APP)) fs.copyFileSync(path.join(USER_APP, f), path.join(app, f))
  // the binary the program loads is the installed package's, not a checkout's
  const where = run('node', ['-e', "console.log(require.resolve('authstate'), require.resolve('authstate-linux-x64-gnu'))"], { cwd: app, env })
  assert.ok(where.split(' ').every((p) => p.startsWith(app)), where)

  const cjs = JSON.parse(run('node', ['app.cjs'], { cwd: app, env }))
  assert.deepEqual(cjs, { preKeys: 30, nextPreKeyId: 31 })
  const esm = JSON.parse(run('node', ['app.mjs'], { cwd: app, env }))
  assert.equal(esm.appStateSyncKey, 'AppStateSyncKeyData')
  assert.ok(esm.ops.length > 0)
  const rows = async (co) => (await db.query(
    'SELECT (SELECT count(*) FROM whatsapp_keys WHERE company_id = $1)::int AS k, (SELECT count(*) FROM whatsapp_auth WHERE company_id = $1)::int AS a',
    [co])).rows[0]
  assert.deepEqual(await rows('user_cjs'), { k: 30, a: 1 })
  assert.deepEqual(await rows('user_esm'), { k: 2, a: 1 })
  assert.deepEqual(await rows('user_esm_tmp'), { k: 0, a: 0 })

  // the README example, verbatim up to the socket, then the shutdown it does on SIGTERM
  const example = fs.readFileSync(EXAMPLE, 'utf8')
  const cut = example.indexOf('const sock = makeWASocket(')
  assert.ok(cut > 0, 'the example creates a socket')
  fs.writeFileSync(path.join(app, 'readme-run.mjs'), example.slice(0, cut) +
    'await saveCreds()\nconsole.log(JSON.stringify({ registrationId: state.creds.registrationId }))\nawait store.close()\n')
  const { registrationId } = JSON.parse(run('node', ['readme-run.mjs'], { cwd: app, env }))
  const { rows: acme } = await db.query("SELECT creds->>'registrationId' AS r FROM whatsapp_auth WHERE company_id = 'acme'")
  assert.equal(Number(acme[0].r), registrationId)

  fs.copyFileSync(EXAMPLE, path.join(app, 'readme.mjs'))
  assert.deepEqual(typeErrors(['types.cts', 'types.mts', 'readme.mjs'].map((f) => path.join(app, f))), [])

  // no binary for this platform (e.g. installed with --omit=optional): a message saying what to do
  const bare = path.join(work, 'bare')
  fs.mkdirSync(path.join(bare, 'node_modules'), { recursive: true })
  fs.cpSync(path.join(app, 'node_modules', 'authstate'), path.join(bare, 'node_modules', 'authstate'), { recursive: true })
  const r = spawnSync('node', ['-e', "require('authstate')"], { cwd: bare, env, encoding: 'utf8' })
  assert.notEqual(r.status, 0)
  assert.match(r.stderr, /no native binding could be loaded for linux-x64/)
  assert.match(r.stderr, /Prebuilt platforms: linux-x64-gnu/)
  assert.match(r.stderr, /--omit=optional/)
})
