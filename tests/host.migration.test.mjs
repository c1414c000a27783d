// A state directory written by kars-mesh 0.1.0 (one file per record) is
// imported into the SQLite store on first start (js-host/state-db.js): the
// identities, sessions and inboxes of tests/fixtures/state-0.1.0 (written by
// 0.1.0 itself, see make-state-0.1.0.mjs) keep working with their peer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from './harness/servers.mjs';
import { createNode } from '../js-host/node-host.js';
import { openStateDir } from '../js-host/state-db.js';
import { openRecords } from '../js-host/storage-fs.js';
import { allRecords, dbFile } from './harness/state-db.mjs';

const FIXTURE = fileURLToPath(new URL('./fixtures/state-0.1.0/', import.meta.url));
const DIDS = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'dids.json'), 'utf8'));
const quiet = () => {};

let srv;
const dirs = [];
before(async () => {
  srv = await startServers();
});
after(async () => {
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A private copy of the fixture (git keeps no modes: state.key must be 0600, directories 0700). */
function copyFixture(who) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `kars-migrate-${who}-`));
  dirs.push(base);
  const dst = path.join(base, who);
  fs.cpSync(path.join(FIXTURE, who), dst, { recursive: true });
  const walk = (p) => {
    const st = fs.statSync(p);
    fs.chmodSync(p, st.isDirectory() ? 0o700 : 0o600);
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(path.join(p, n));
  };
  walk(dst);
  return dst;
}

/** The 0.1.0 record files of a directory: [[key, Buffer]], sorted. */
function fileRecords(dir) {
  const r = openRecords(dir);
  return r.list('').map((k) => [k, Buffer.from(r.get(k))]);
}

const start = (stateDir) => createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, log: quiet });

async function inboxUntil(node, pred, what, ms = 20_000) {
  const until = Date.now() + ms;
  for (;;) {
    const r = await node.callTool('mesh_inbox', { unread_only: false, limit: 50 });
    const msgs = r.details.mesh.messages;
    if (pred(msgs)) return msgs;
    if (Date.now() > until) throw new Error(`${what}: inbox is ${JSON.stringify(msgs.map((m) => m.payload))}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}
const texts = (msgs) => msgs.map((m) => (typeof m.payload === 'string' ? m.payload : m.payload?.content)).sort();

test('0.1.0 state directories are imported record for record; identities, sessions and inboxes keep working with the peer', { timeout: 120_000 }, async (t) => {
  const aliceDir = copyFixture('alice');
  const bobDir = copyFixture('bob');
  const oldAlice = fileRecords(aliceDir);
  const oldBob = fileRecords(bobDir);
  assert.ok(oldAlice.some(([k]) => k.startsWith('session/')) && oldBob.some(([k]) => k.startsWith('inbox/')), 'the fixture has sessions and inboxes');

  const alice = await start(aliceDir);
  const bob = await start(bobDir);
  t.after(() => Promise.all([alice.stop(), bob.stop()]));
  assert.equal(alice.did, DIDS.alice, 'the identity is the imported one');
  assert.equal(bob.did, DIDS.bob);
  for (const [dir, old] of [[aliceDir, oldAlice], [bobDir, oldBob]]) {
    assert.equal(fs.existsSync(path.join(dir, 'records')), false, 'the old files are gone once the import is committed');
    assert.ok(fs.existsSync(dbFile(dir)));
    const now = new Map(allRecords(dir));
    // Every record as 0.1.0 wrote it (the running node may have written more since).
    for (const [k, v] of old) {
      if (k.startsWith('session/') || k === 'prekeys') continue; // the node may already have advanced these
      assert.deepEqual(now.get(k), v, `record ${k} imported byte for byte`);
    }
  }

  // The inboxes 0.1.0 kept: bob has alice's three (one read), alice has bob's two.
  const atBob = await inboxUntil(bob, (m) => m.length >= 3, 'bob\'s old inbox');
  assert.deepEqual(texts(atBob), ['a1 written by 0.1.0', 'a2 written by 0.1.0', 'a3 written by 0.1.0']);
  assert.equal(atBob.filter((m) => m.read).length, 1, 'the read mark survived');
  const atAlice = await inboxUntil(alice, (m) => m.length >= 2, 'alice\'s old inbox');
  assert.deepEqual(texts(atAlice), ['b1 written by 0.1.0', 'b2 written by 0.1.0']);

  // The sessions 0.1.0 set up carry new messages both ways: no new session.
  const sent = await alice.callTool('mesh_send', { to: bob.did, message: 'a4 after the import' });
  assert.equal(sent.details.mesh.session, 'existing', JSON.stringify(sent.details.mesh));
  await inboxUntil(bob, (m) => texts(m).includes('a4 after the import'), 'a4 at bob');
  const reply = await bob.callTool('mesh_send', { to: alice.did, message: 'b3 after the import' });
  assert.equal(reply.details.mesh.session, 'existing', JSON.stringify(reply.details.mesh));
  await inboxUntil(alice, (m) => texts(m).includes('b3 after the import'), 'b3 at alice');

  // A second start does not import again and loses nothing.
  await alice.stop();
  const again = await start(aliceDir);
  t.after(() => again.stop());
  const kept = await inboxUntil(again, (m) => m.length >= 3, 'alice after a restart');
  assert.deepEqual(texts(kept), ['b1 written by 0.1.0', 'b2 written by 0.1.0', 'b3 after the import']);
  const sent2 = await again.callTool('mesh_send', { to: bob.did, message: 'a5 after a restart' });
  assert.equal(sent2.details.mesh.session, 'existing');
  await inboxUntil(bob, (m) => texts(m).includes('a5 after a restart'), 'a5 at bob');
});

test('an import that cannot finish changes nothing: the old files stay, the database holds none of them, the error names the record', (t) => {
  const dir = copyFixture('bob');
  const before = fileRecords(dir);
  fs.writeFileSync(path.join(dir, 'records', 'zz-plaintext'), '{"secret":"not sealed"}', { mode: 0o600 });
  assert.throws(() => openStateDir(dir, { sealedOnly: true }), (e) => {
    assert.equal(e.name, 'StateDirError');
    assert.match(e.message, /cannot import record "zz-plaintext" of kars-mesh 0\.1\.0 .*not a sealed record.*Nothing was changed/);
    return true;
  });
  assert.deepEqual(fileRecords(dir).filter(([k]) => k !== 'zz-plaintext'), before, 'the old files are kept as they were');
  assert.deepEqual(allRecords(dir), [], 'the database holds nothing of the refused import');
  assert.equal(fs.existsSync(path.join(dir, 'lock')), false, 'the lock is released');
  // Once the stray file is gone, the import goes through.
  fs.rmSync(path.join(dir, 'records', 'zz-plaintext'));
  const s = openStateDir(dir, { sealedOnly: true });
  t.after(() => s.close());
  assert.deepEqual(s.list(''), before.map(([k]) => k));
});

test('files left behind by a crash after the import committed are removed, not imported again', (t) => {
  const dir = copyFixture('alice');
  const saved = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-migrate-left-'));
  dirs.push(saved);
  fs.cpSync(path.join(dir, 'records'), path.join(saved, 'records'), { recursive: true });
  openStateDir(dir, { sealedOnly: true }).close();
  const imported = allRecords(dir);
  // As if the process died between the commit and the removal: the files are
  // back, one of them different (it must not overwrite the committed record).
  fs.cpSync(path.join(saved, 'records'), path.join(dir, 'records'), { recursive: true });
  const identity = path.join(dir, 'records', 'identity');
  const changed = fs.readFileSync(identity);
  changed[changed.length - 1] ^= 1;
  fs.writeFileSync(identity, changed);
  const s = openStateDir(dir, { sealedOnly: true });
  t.after(() => s.close());
  assert.equal(fs.existsSync(path.join(dir, 'records')), false);
  assert.deepEqual(allRecords(dir), imported);
});
