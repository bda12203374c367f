#!/usr/bin/env node
'use strict'
// Packs the npm packages the napi-rs way: the main package `authstate` (JS, types, the
// generated loader) and one package per platform under npm/<platform>/ holding the prebuilt
// binary that `napi build --platform` left in node/ (authstate.<platform>.node).
//   node scripts/pack.js [DEST]     (npm run pack:all) -> prints a JSON report
// Adding a platform: add its triple to package.json "napi.triples.additional", run
// `napi create-npm-dir -t .`, add the package to "optionalDependencies", build on that platform.
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const NODE_DIR = path.join(__dirname, '..')

function npmPack (dir, dest) {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', dest], {
    cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit']
  })
  const [info] = JSON.parse(out)
  return {
    name: info.name,
    version: info.version,
    tarball: path.join(dest, info.filename),
    size: info.size,
    unpackedSize: info.unpackedSize,
    files: info.files.map((f) => f.path).sort()
  }
}

// Checks the layout (every platform package is an optional dependency of the same version and
// the reverse), copies the binaries in, packs. Throws when this machine's binary is missing.
function packAll (dest = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-pack-'))) {
  fs.mkdirSync(dest, { recursive: true })
  const main = JSON.parse(fs.readFileSync(path.join(NODE_DIR, 'package.json'), 'utf8'))
  const npmDir = path.join(NODE_DIR, 'npm')
  const platforms = fs.readdirSync(npmDir).sort()
  const names = platforms.map((p) => JSON.parse(fs.readFileSync(path.join(npmDir, p, 'package.json'), 'utf8')))
  const optional = main.optionalDependencies || {}
  if (JSON.stringify(Object.keys(optional).sort()) !== JSON.stringify(names.map((n) => n.name).sort())) {
    throw new Error(`optionalDependencies ${JSON.stringify(optional)} differ from the packages in npm/: ${names.map((n) => n.name)}`)
  }
  for (const n of names) {
    if (n.version !== main.version || optional[n.name] !== main.version) {
      throw new Error(`${n.name}: version ${n.version} / dependency ${optional[n.name]} differ from ${main.version}`)
    }
  }
  const packed = []
  for (const [i, platform] of platforms.entries()) {
    const binary = names[i].main
    const built = path.join(NODE_DIR, binary)
    if (!fs.existsSync(built)) {
      if (platform === currentPlatform()) throw new Error(`${binary} is not built: run npm run build first`)
      continue // another platform's binary comes from its own build machine
    }
    fs.copyFileSync(built, path.join(npmDir, platform, binary))
    packed.push(npmPack(path.join(npmDir, platform), dest))
  }
  packed.unshift(npmPack(NODE_DIR, dest))
  return { dest, packages: packed }
}

// The napi-rs platform name of this machine, e.g. linux-x64-gnu.
function currentPlatform () {
  const { platform, arch } = process
  if (platform !== 'linux') return `${platform}-${arch}${platform === 'win32' ? '-msvc' : ''}`
  const glibc = process.report.getReport().header.glibcVersionRuntime
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

module.exports = { packAll, currentPlatform }

if (require.main === module) {
  const report = packAll(process.argv[2] && path.resolve(process.argv[2]))
  process.stdout.write(JSON.stringify(report, null, 2) + '\n')
}
