#!/usr/bin/env node
'use strict'
// Packs the npm packages the napi-rs way: the main package `authstate` (JS, types, the
// generated loader) and one package per platform under npm/<platform>/ holding the prebuilt
// binary that `napi build --platform` left in node/ (authstate.<platform>.node).
// As `napi prepublish` does, the main package gets every platform package as an optional
// dependency at pack time (written into a staged copy, the checkout is not touched): in the
// checkout they would make `npm install` look for packages that are not published yet.
//   node scripts/pack.js [DEST]     (npm run pack:all) -> prints a JSON report
// Adding a platform: add its triple to package.json "napi.triples.additional", run
// `npx napi create-npm-dir -t .`, build on that platform (CI matrix) and pack there.
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

// Copies the binaries into npm/<platform>/, packs each platform that has its binary and the main
// package with those platforms as optional dependencies. Throws when this machine's binary is
// missing or a platform package's version differs from the main package's.
function packAll (dest = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-pack-'))) {
  fs.mkdirSync(dest, { recursive: true })
  const main = JSON.parse(fs.readFileSync(path.join(NODE_DIR, 'package.json'), 'utf8'))
  const npmDir = path.join(NODE_DIR, 'npm')
  const packed = []
  for (const platform of fs.readdirSync(npmDir).sort()) {
    const meta = JSON.parse(fs.readFileSync(path.join(npmDir, platform, 'package.json'), 'utf8'))
    if (meta.version !== main.version) throw new Error(`${meta.name} ${meta.version} differs from ${main.name} ${main.version}`)
    const built = path.join(NODE_DIR, meta.main)
    if (!fs.existsSync(built)) {
      if (platform === currentPlatform()) throw new Error(`${meta.main} is not built: run npm run build first`)
      continue // another platform's binary comes from its own build machine
    }
    fs.copyFileSync(built, path.join(npmDir, platform, meta.main))
    packed.push(npmPack(path.join(npmDir, platform), dest))
  }

  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'authstate-stage-'))
  try {
    for (const f of [...main.files, 'README.md']) fs.copyFileSync(path.join(NODE_DIR, f), path.join(stage, f))
    main.optionalDependencies = Object.fromEntries(packed.map((p) => [p.name, p.version]))
    fs.writeFileSync(path.join(stage, 'package.json'), JSON.stringify(main, null, 2) + '\n')
    packed.unshift(npmPack(stage, dest))
  } finally {
    fs.rmSync(stage, { recursive: true, force: true })
  }
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
