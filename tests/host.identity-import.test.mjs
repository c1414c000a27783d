// Import of the original plugin's ~/.kars/identity.json (schema 2, AES-256-GCM
// under SHA-256("kars:mesh-identity:" + hostname + ":" + homedir)): the DID is
// kept, the file is only read, and an existing identity is never replaced.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNode } from '../js-host/node-host.js';

const dirs = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
const tmp = () => { const d = mkdtempSync(path.join(os.tmpdir(), 'kars-import-')); dirs.push(d); return d; };

function legacyFile(seed, host = os.hostname(), home = os.homedir()) {
  const kek = createHash('sha256').update(`kars:mesh-identity:${host}:${home}`).digest();
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek, iv);
  const plain = JSON.stringify({ signing_public_key: 'ed25519:AAAA', signing_private_key: `ed25519:${seed.toString('base64')}`, exchange_public_key: 'x25519:AAAA', exchange_private_key: 'x25519:AAAA' });
  const ct = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
  const file = path.join(tmp(), 'identity.json');
  writeFileSync(file, JSON.stringify({ schema: 2, ciphertext: ct.toString('base64'), iv: iv.toString('base64'), authTag: c.getAuthTag().toString('base64'), createdAt: new Date().toISOString() }, null, 2), { mode: 0o600 });
  return file;
}

test('an identity from the original plugin keeps its DID; the file is not touched', async () => {
  const seed = randomBytes(32);
  const file = legacyFile(seed);
  const before = readFileSync(file);
  const mtime = statSync(file).mtimeMs;
  const a = await createNode({ stateDir: tmp(), legacyIdentityFile: file, log: () => {} });
  const b = await createNode({ stateDir: tmp(), identitySeedHex: seed.toString('hex'), log: () => {} });
  assert.equal(a.did, b.did);
  await a.stop();
  await b.stop();
  assert.deepEqual(readFileSync(file), before);
  assert.equal(statSync(file).mtimeMs, mtime);
});

test('a file from another machine is not imported (warned), and a stored identity is never replaced', async () => {
  const seed = randomBytes(32);
  const foreign = legacyFile(seed, 'another-host', '/home/else');
  const logs = [];
  const dir = tmp();
  const a = await createNode({ stateDir: dir, legacyIdentityFile: foreign, log: (l, m) => logs.push(`${l} ${m}`) });
  const ref = await createNode({ stateDir: tmp(), identitySeedHex: seed.toString('hex'), log: () => {} });
  assert.notEqual(a.did, ref.did);
  assert.ok(logs.some((l) => l.startsWith('warn') && l.includes('was not imported')), logs.join('\n'));
  const first = a.did;
  await a.stop();
  await ref.stop();
  const again = await createNode({ stateDir: dir, legacyIdentityFile: legacyFile(seed), log: () => {} });
  assert.equal(again.did, first);
  await again.stop();
});
