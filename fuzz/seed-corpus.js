#!/usr/bin/env node
// Builds the seed corpora of the fuzz targets in fuzz/corpus/<target>/ (not committed) from
// the committed Baileys fixtures (tests/fixtures/baileys/: real values in every stored shape),
// plus hand-picked numbers and connection strings. Run by scripts/fuzz.sh; idempotent.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const root = path.resolve(__dirname, '..');
const fixtures = path.join(root, 'tests', 'fixtures', 'baileys');
const out = path.join(__dirname, 'corpus');

function put(target, content) {
  const dir = path.join(out, target);
  fs.mkdirSync(dir, { recursive: true });
  const buf = Buffer.isBuffer(content) ? content : Buffer.from(content);
  // Content-named, as libFuzzer names its own inputs: re-running adds nothing twice.
  const name = crypto.createHash('sha1').update(buf).digest('hex');
  fs.writeFileSync(path.join(dir, name), buf);
}

let values = 0;
for (const file of fs.readdirSync(fixtures).filter((f) => f.endsWith('.json')).sort()) {
  const f = JSON.parse(fs.readFileSync(path.join(fixtures, file), 'utf8'));
  const shapes = [f.canonical, ...Object.values(f.variants)];
  for (const v of shapes) {
    put('codec', JSON.stringify(v));
    put('set_args', JSON.stringify({ [f.type]: { [f.id]: v, [`${f.id}-gone`]: null } }));
    values++;
  }
  // Pretty text too: white space and key order as jsonb gives them back.
  put('codec', JSON.stringify(f.canonical, null, 1));
}

// Numbers where parsing and writing can go wrong (see tests/numbers_props.rs).
const numbers = [
  '4049e39', '4'.repeat(85) + '0', '-0', '0.1', '1e21', '1e-7', '9007199254740993',
  '18446744073709551616', '1.7976931348623157e308', '1.7976931348623159e308', '1e400',
  '5e-324', '2.4703282292062328e-324', '1e-400', '2018670712153354.25', '100.0', '1E5',
];
const finite = numbers.filter((n) => n !== '1e400' && n !== '1.7976931348623159e308');
put('codec', `[${finite.join(',')}]`);
for (const n of numbers) {
  put('codec', n);
  put('codec', `{"n":${n}}`);
  put('codec', `{"0":${n},"1":1}`);
}
put('set_args', `{"pre-key":{"1":{"n":[${finite.join(',')}]}}}`);

// Connection strings: URLs and libpq key=value text (first byte 0), PG* variables (first
// byte 1, newline-separated in the order the target documents).
const conns = [
  'postgres://app:s3cret@db.example.com:6432/wa?sslmode=verify-full&sslrootcert=%2Fetc%2Froot.crt&application_name=x',
  'postgresql://user@localhost/db?connect_timeout=10&sslmode=require',
  'postgres://a,b:5433/db?target_session_attrs=read-write',
  'postgres:///db?host=/var/run/postgresql',
  "host=localhost password='s3 cret' dbname=wa sslmode=require",
  "host=/tmp port=5432 user=postgres application_name='a\\'b' connect_timeout=3",
  'host=h1,h2 port=1,2 sslcert=x',
];
for (const c of conns) put('conn_string', Buffer.concat([Buffer.from([0]), Buffer.from(c)]));
put('conn_string', Buffer.from('\x01localhost\n5432\npostgres\nsecret\nwa\napp\n5\nverify-ca\n/etc/ca.pem'));
put('conn_string', Buffer.from('\x01/var/run/postgresql,db2\n65536\n\n\n\n\nten'));

console.log(`seeded ${out}: ${values} fixture values, ${numbers.length} numbers, ${conns.length + 2} connection strings`);
