'use strict'
// Fails when index.d.ts drifts from the native exports or from index.js, and when the package
// does not type-check against Baileys' own types.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const ts = require('typescript')
const pkg = require('..')

const DTS = path.join(__dirname, '..', 'index.d.ts')

function declarations () {
  const sf = ts.createSourceFile(DTS, fs.readFileSync(DTS, 'utf8'), ts.ScriptTarget.Latest, true)
  const values = new Set() // exported runtime values: functions, classes, consts
  const members = {} // class/interface name -> member names
  const memberNames = (node) => node.members
    .filter((m) => m.name && !(ts.getCombinedModifierFlags(m) & ts.ModifierFlags.Private) && !ts.isConstructorDeclaration(m))
    .map((m) => m.name.getText(sf))
  for (const st of sf.statements) {
    if (ts.isFunctionDeclaration(st) || ts.isClassDeclaration(st)) values.add(st.name.text)
    if (ts.isVariableStatement(st)) for (const d of st.declarationList.declarations) values.add(d.name.getText(sf))
    if (ts.isClassDeclaration(st) || ts.isInterfaceDeclaration(st)) members[st.name.text] = [...new Set(memberNames(st))].sort()
  }
  return { values: [...values].sort(), members }
}

const protoNames = (cls) => Object.getOwnPropertyNames(cls.prototype)
  .filter((n) => n !== 'constructor' && !n.startsWith('_')).sort()

test('index.d.ts declares exactly what index.js exports', () => {
  const { values } = declarations()
  assert.deepEqual(values, Object.keys(pkg).sort())
})

test('index.d.ts declares exactly the native exports', () => {
  const { members } = declarations()
  const native = pkg.native
  assert.deepEqual(members.NativeBinding, Object.keys(native).sort())
  assert.deepEqual(members.NativeStore, protoNames(native.NativeStore))
  assert.deepEqual(members.NativeSession, protoNames(native.NativeSession))
})

test('index.d.ts declares exactly the Store and Session methods', () => {
  const { members } = declarations()
  assert.deepEqual(members.Store, protoNames(pkg.Store))
  // companyId is an instance property set in the constructor
  assert.deepEqual(members.Session, [...protoNames(pkg.Session), 'companyId'].sort())
})

test('the package type-checks with Baileys types (tsc --noEmit)', { timeout: 120000 }, () => {
  const file = path.join(__dirname, 'types', 'usage.mts')
  const program = ts.createProgram([file], {
    noEmit: true,
    strict: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    types: ['node']
  })
  const diags = ts.getPreEmitDiagnostics(program)
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n') + (d.file ? ` (${path.basename(d.file.fileName)})` : ''))
  assert.deepEqual(diags, [])
})
