#!/usr/bin/env node
'use strict'
// Builds the addon with cargo and places it at node/authstate.node. Needs only cargo and Node.
//   node scripts/build.js            release build
//   node scripts/build.js --debug    debug build (or AUTHSTATE_NODE_PROFILE=debug)
const { spawnSync, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.resolve(__dirname, '..', '..')
const debug = process.argv.includes('--debug') || process.env.AUTHSTATE_NODE_PROFILE === 'debug'
const profile = debug ? 'debug' : 'release'

const args = ['build', '-p', 'authstate-node']
if (!debug) args.push('--release')
console.error(`$ cargo ${args.join(' ')}`)
const r = spawnSync('cargo', args, { cwd: root, stdio: 'inherit' })
if (r.status !== 0) process.exit(r.status ?? 1)

const meta = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], {
  cwd: root, encoding: 'utf8', maxBuffer: 64 << 20
}))
const lib = { darwin: 'libauthstate_node.dylib', win32: 'authstate_node.dll' }[process.platform] || 'libauthstate_node.so'
const from = path.join(meta.target_directory, profile, lib)
const to = path.join(__dirname, '..', 'authstate.node')
// copy to a temp name, then rename: a running process keeps its mapped copy intact
const tmp = `${to}.${process.pid}.tmp`
fs.copyFileSync(from, tmp)
fs.renameSync(tmp, to)
console.error(`placed ${path.relative(process.cwd(), to) || to} (${profile}) from ${from}`)
