// Proves the harness (tests/harness/servers.mjs) and the AGT Python reference
// peer (tests/peers/agt_peer.py) against the REAL core-5.0.0 relay and
// registry: two and three AGT peers, first contact via KNOCK, both
// directions, offline store-and-forward (existing session and first contact),
// and a relay restart. Loopback only.
//
//   bash scripts/setup-venv.sh && node --test tests/interop.agt-self.test.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startServers } from './harness/servers.mjs';
import { spawnAgtPeer } from './peers/agt_peer.mjs';

const T = 10_000;
let srv;
let dir;
const peers = [];

async function relayStats() {
  const r = await fetch(`${srv.relayUrl}/health`);
  return (await r.json()).stats;
}

async function peer(opts = {}) {
  const p = await spawnAgtPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, ...opts });
  peers.push(p);
  return p;
}

const sentTo = (did) => (e) => (e.event === 'sent' && e.to === did) || e.event === 'error';
const msgFrom = (did, pred = () => true) => (e) => e.event === 'message' && e.from === did && pred(e.payload);

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'agt-self-'));
  const t0 = Date.now();
  srv = await startServers();
  console.log(`# servers healthy in ${Date.now() - t0} ms`, srv.startTimes(), srv.relayUrl, srv.registryUrl);
});

after(async () => {
  await Promise.allSettled(peers.map((p) => p.close()));
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// On failure, show what the servers said.
async function withLogs(fn) {
  try {
    await fn();
  } catch (e) {
    console.log(srv.logs());
    throw e;
  }
}

test('AGT Python crypto + agt_peer wire builders replay vectors.json byte for byte', () => {
  const script = fileURLToPath(new URL('./peers/agt_vectors_check.py', import.meta.url));
  const py = fileURLToPath(new URL('../.venv/bin/python', import.meta.url));
  const out = execFileSync(py, [script], { encoding: 'utf8', timeout: 20_000 });
  assert.match(out, /all vectors ok/, out);
});

test('AGT peers: KNOCK first contact, both ways, offline delivery, relay restart', { timeout: 60_000 }, () => withLogs(async () => {
  const alice = await peer();
  const bobState = path.join(dir, 'bob.json');
  let bob = await peer({ echo: true, statePath: bobState });
  assert.match(alice.did, /^did:mesh:[0-9a-f]{32}$/);
  assert.notEqual(alice.did, bob.did);

  // 1. first contact A → B via KNOCK; B's echo comes back A ← B
  const hello = { text: 'hello bob', n: 1, uni: 'héllo ✓' };
  alice.send(bob.did, hello);
  const sent = await alice.next(sentTo(bob.did), T);
  assert.equal(sent.event, 'sent', JSON.stringify(sent));
  assert.equal(sent.session, 'new');
  const knock = await bob.next((e) => e.event === 'knock', T);
  assert.equal(knock.from, alice.did);
  assert.equal(knock.otk, 0, 'first prekey fetch pops OPK 0');
  const got = await bob.next(msgFrom(alice.did), T);
  assert.deepEqual(got.payload, hello);
  assert.equal(got.evidence, 'encrypted');
  assert.equal(got.id, sent.id);
  await alice.next((e) => e.event === 'knock_accept' && e.from === bob.did, T);
  const echo = await alice.next(msgFrom(bob.did), T);
  assert.deepEqual(echo.payload, { type: 'echo', content: hello });

  // 2. B → A on the same session, then a few more A → B in one chain
  bob.send(alice.did, { text: 'hi alice' });
  assert.equal((await bob.next((e) => e.event === 'sent', T)).session, 'existing');
  assert.deepEqual((await alice.next(msgFrom(bob.did, (p) => p.text === 'hi alice'), T)).payload, { text: 'hi alice' });
  for (let i = 0; i < 3; i++) alice.send(bob.did, { seq: i });
  for (let i = 0; i < 3; i++) {
    assert.equal((await alice.next(sentTo(bob.did), T)).session, 'existing');
    assert.deepEqual((await bob.next(msgFrom(alice.did, (p) => p.seq === i), T)).payload, { seq: i });
    assert.deepEqual((await alice.next(msgFrom(bob.did, (p) => p.content?.seq === i), T)).payload,
      { type: 'echo', content: { seq: i } });
  }

  // 3. B offline (process gone, keys persisted); A sends on the existing session
  await bob.close();
  const stored0 = (await relayStats()).messages_stored;
  alice.send(bob.did, { text: 'while you were out' });
  assert.equal((await alice.next(sentTo(bob.did), T)).session, 'existing');
  for (let i = 0; i < 50 && (await relayStats()).messages_stored === stored0; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal((await relayStats()).messages_stored, stored0 + 1, 'relay stored the frame for offline bob');
  bob = await peer({ echo: true, statePath: bobState });
  const late = await bob.next(msgFrom(alice.did), T);
  assert.deepEqual(late.payload, { text: 'while you were out' });
  await alice.next(msgFrom(bob.did, (p) => p.content?.text === 'while you were out'), T);
  // bob acked it: a reconnect gets nothing pushed again
  const delivered = (await relayStats()).messages_delivered;
  await bob.close();
  bob = await peer({ echo: true, statePath: bobState });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await relayStats()).messages_delivered, delivered, 'acked frame was not re-pushed');

  // 4. first contact with an offline peer: KNOCK + message stored, delivered on connect
  const carolState = path.join(dir, 'carol.json');
  let carol = await peer({ statePath: carolState });
  const carolDid = carol.did;
  await carol.close();
  alice.send(carolDid, { text: 'knock knock, carol' });
  assert.equal((await alice.next(sentTo(carolDid), T)).session, 'new');
  carol = await peer({ statePath: carolState });
  assert.equal(carol.did, carolDid);
  assert.equal((await carol.next((e) => e.event === 'knock', T)).from, alice.did);
  assert.deepEqual((await carol.next(msgFrom(alice.did), T)).payload, { text: 'knock knock, carol' });
  carol.send(alice.did, { text: 'who is there' });
  assert.deepEqual((await alice.next(msgFrom(carolDid), T)).payload, { text: 'who is there' });

  // 5. relay restart: everyone reconnects; sessions survive; both directions work
  await srv.restartRelay();
  await Promise.all([alice, bob, carol].map((p) => p.next((e) => e.event === 'connected', T)));
  alice.send(bob.did, { text: 'after restart' });
  assert.deepEqual((await bob.next(msgFrom(alice.did), T)).payload, { text: 'after restart' });
  await alice.next(msgFrom(bob.did, (p) => p.content?.text === 'after restart'), T);
  carol.send(alice.did, { text: 'carol after restart' });
  assert.deepEqual((await alice.next(msgFrom(carolDid), T)).payload, { text: 'carol after restart' });

  // no decrypt or relay errors anywhere
  for (const p of [alice, bob, carol]) {
    const errs = p.events().filter((e) => e.event === 'error');
    assert.deepEqual(errs, [], p.diag());
  }
}));
