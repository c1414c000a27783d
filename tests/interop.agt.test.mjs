// Interop: our engine (js-host/node-host.js, in this process) <-> the AGT
// Python reference peer (tests/peers/agt_peer.py, its own process), through
// the REAL AgentMesh relay and registry (agent-governance-toolkit-core 5.0.0)
// on loopback.
//
//   (a) we initiate: first contact via KNOCK to an AGT peer with echo on; the
//       echo comes back into our inbox (evidence "encrypted"); then more
//       messages both ways on that one session.
//   (b) a FRESH AGT peer initiates to us (first contact between the two); we
//       receive it, reply on the session it opened, it decrypts the reply;
//       then more both ways.
//
//   bash scripts/setup-venv.sh && bash scripts/build.sh
//   node --test tests/interop.agt.test.mjs
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { createNode } from '../js-host/node-host.js';
import { startServers } from './harness/servers.mjs';
import { spawnAgtPeer } from './peers/agt_peer.mjs';

const T = 15_000; // bound for any single step (loopback)
let srv;
let dir;
let ours; // our node
const peers = [];
const engineLog = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kars-interop-agt-'));
  const t0 = Date.now();
  srv = await startServers();
  console.log(`# servers healthy in ${Date.now() - t0} ms ${srv.relayUrl} ${srv.registryUrl}`);
  ours = await createNode({
    stateDir: path.join(dir, 'ours'),
    relayUrl: srv.relayUrl,
    registryUrl: srv.registryUrl,
    name: 'kars-interop',
    log: (level, message) => { if (level !== 'debug') engineLog.push(`[${level}] ${message}`); },
  });
  const reg = await ours.callTool('mesh_register', {}, { timeoutMs: T });
  assert.equal(reg.details?.mesh?.registered, true, JSON.stringify(reg));
  console.log(`# our node ${ours.did}`);
});

after(async () => {
  await Promise.allSettled(peers.map((p) => p.close()));
  await ours?.stop();
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function agt(opts = {}) {
  const p = await spawnAgtPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, ...opts });
  peers.push(p);
  return p;
}

/** On failure, print what the engine, the servers and the peers said. */
async function withDiagnostics(fn) {
  try {
    await fn();
  } catch (e) {
    console.log(`--- engine log ---\n${engineLog.join('\n')}`);
    for (const p of peers) console.log(`--- agt peer ${p.did} ---\n${p.diag()}`);
    console.log(`--- servers ---\n${srv.logs()}`);
    throw e;
  }
}

async function send(to, message) {
  const r = await ours.callTool('mesh_send', { to, message }, { timeoutMs: T });
  assert.ok(!r.content[0].text.startsWith('❌'), `mesh_send failed: ${r.content[0].text}`);
  return r.details.mesh;
}

// Messages read from our inbox but not yet matched by a test step.
const unmatched = [];
/** Read our inbox (mesh_inbox wait_seconds) until a message matching `pred` arrives. */
async function receive(pred, timeoutMs = T, desc = String(pred)) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = unmatched.findIndex(pred);
    if (i >= 0) return unmatched.splice(i, 1)[0];
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new Error(`no inbox message matching ${desc} within ${timeoutMs} ms; unmatched: ${JSON.stringify(unmatched)}`);
    }
    const r = await ours.callTool('mesh_inbox', { wait_seconds: Math.max(0.1, left / 1000), mark_read: true, limit: 100 }, { timeoutMs: left + 5000 });
    assert.ok(!r.content[0].text.startsWith('❌'), `mesh_inbox failed: ${r.content[0].text}`);
    unmatched.push(...r.details.mesh.messages);
  }
}

const fromPeer = (did, pred = () => true) => (m) => m.from === did && pred(m.payload);
const agtMsg = (did, pred = () => true) => (e) => e.event === 'message' && e.from === did && pred(e.payload);
const agtSent = (did) => (e) => (e.event === 'sent' && e.to === did) || e.event === 'error';

async function ourStatus() {
  return (await ours.callTool('mesh_identity', {}, { timeoutMs: T })).details.mesh;
}

test('(a) our client initiates to an AGT peer (KNOCK), the echo comes back, more both ways on one session',
  { timeout: 60_000 }, () => withDiagnostics(async () => {
    const t0 = Date.now();
    const p = await agt({ echo: true });
    const before = await ourStatus();

    // First contact: KNOCK + first message.
    const first = await send(p.did, 'hello AGT ✓ — from kars-mesh');
    assert.equal(first.session, 'new', 'first send to a new peer opens a session');
    assert.equal(first.queued, false);
    const knock = await p.next((e) => e.event === 'knock', T, 'knock');
    assert.equal(knock.from, ours.did);
    const got = await p.next(agtMsg(ours.did), T, 'first message at the AGT peer');
    assert.equal(got.evidence, 'encrypted');
    assert.equal(got.id, first.id, 'the AGT peer decrypted the frame we sent');
    assert.deepEqual(got.payload, { type: 'message', content: 'hello AGT ✓ — from kars-mesh' });

    // The echo, through the relay, into our inbox.
    const echo = await receive(fromPeer(p.did, (pl) => pl?.type === 'echo'), T, 'the echo');
    assert.equal(echo.evidence, 'encrypted');
    assert.deepEqual(echo.payload, { type: 'echo', content: { type: 'message', content: 'hello AGT ✓ — from kars-mesh' } });
    assert.ok(echo.id && echo.received_at > 0);
    // The AGT peer's own record of sending that echo (same frame id).
    await p.next((e) => e.event === 'sent' && e.id === echo.id, T, 'agt sent the echo');

    // More both ways on the same session: ours -> AGT (echoed back), AGT -> ours.
    for (let i = 1; i <= 5; i++) {
      const msg = { seq: i, text: `ours→agt #${i}`, nested: { ok: true, list: [i, i * 2] } };
      const s = await send(p.did, msg);
      assert.equal(s.session, 'existing', `send #${i} reuses the session`);
      const atPeer = await p.next(agtMsg(ours.did, (pl) => pl?.seq === i), T, `ours→agt #${i}`);
      assert.equal(atPeer.evidence, 'encrypted');
      assert.deepEqual(atPeer.payload, msg, 'the object payload arrives unchanged (no envelope for a non-kars peer)');
      const back = await receive(fromPeer(p.did, (pl) => pl?.type === 'echo' && pl.content?.seq === i), T, `echo #${i}`);
      assert.deepEqual(back.payload, { type: 'echo', content: msg });
      assert.equal(back.evidence, 'encrypted');
      await p.next((e) => e.event === 'sent' && e.id === back.id, T, `agt sent echo #${i}`);

      const fromAgt = { type: 'note', k: i, text: `agt→ours #${i} ünïcödé` };
      p.send(ours.did, fromAgt);
      const sent = await p.next(agtSent(ours.did), T, `agt sent #${i}`);
      assert.equal(sent.event, 'sent', JSON.stringify(sent));
      assert.equal(sent.session, 'existing', 'the AGT peer answers on the session we opened');
      const inbox = await receive(fromPeer(p.did, (pl) => pl?.type === 'note' && pl.k === i), T, `agt→ours #${i}`);
      assert.equal(inbox.evidence, 'encrypted');
      assert.deepEqual(inbox.payload, fromAgt);
      assert.equal(inbox.id, sent.id);
    }

    // One session, one KNOCK, nothing undecryptable on either side.
    assert.equal(p.events().filter((e) => e.event === 'knock').length, 1, 'exactly one KNOCK');
    assert.deepEqual(p.events().filter((e) => e.event === 'error'), [], p.diag());
    const after_ = await ourStatus();
    assert.equal(after_.sessions, before.sessions + 1, 'one new session on our side');
    assert.equal(after_.stats.undecryptable, before.stats.undecryptable);
    assert.equal(after_.stats.malformed, before.stats.malformed);
    assert.deepEqual(unmatched, [], 'no unexpected inbox messages');
    console.log(`# (a) done in ${Date.now() - t0} ms: 1 KNOCK, 6 messages ours→agt, 6 echoes + 5 notes agt→ours`);
  }));

test('(b) a fresh AGT peer initiates to our client (first contact); we receive and reply; more both ways',
  { timeout: 60_000 }, () => withDiagnostics(async () => {
    const t0 = Date.now();
    const q = await agt(); // fresh identity, never talked to us
    const before = await ourStatus();

    const hello = { type: 'greeting', text: 'hi kars-mesh, AGT here', n: 0 };
    q.send(ours.did, hello);
    const sent = await q.next(agtSent(ours.did), T, 'agt first send');
    assert.equal(sent.event, 'sent', JSON.stringify(sent));
    assert.equal(sent.session, 'new', 'first contact: the AGT peer had to KNOCK');

    const got = await receive(fromPeer(q.did), T, 'first contact from the AGT peer');
    assert.equal(got.evidence, 'encrypted');
    assert.deepEqual(got.payload, hello);
    assert.equal(got.id, sent.id);
    const accept = await q.next((e) => e.event === 'knock_accept', T, 'knock_accept');
    assert.equal(accept.from, ours.did);

    // Our reply goes on the session the AGT peer opened (no KNOCK from us).
    const reply = await send(q.did, { type: 'reply', text: 'hello AGT, kars-mesh answering', re: sent.id });
    assert.equal(reply.session, 'existing', 'we answer on the responder session');
    const atQ = await q.next(agtMsg(ours.did), T, 'our reply at the AGT peer');
    assert.equal(atQ.evidence, 'encrypted');
    assert.equal(atQ.id, reply.id);
    assert.deepEqual(atQ.payload, { type: 'reply', text: 'hello AGT, kars-mesh answering', re: sent.id });

    // More both ways, alternating.
    for (let i = 1; i <= 5; i++) {
      q.send(ours.did, { type: 'greeting', n: i });
      assert.equal((await q.next(agtSent(ours.did), T, `agt send #${i}`)).session, 'existing');
      const m = await receive(fromPeer(q.did, (pl) => pl?.n === i), T, `agt→ours #${i}`);
      assert.equal(m.evidence, 'encrypted');
      assert.deepEqual(m.payload, { type: 'greeting', n: i });
      const s = await send(q.did, `reply #${i}`);
      assert.equal(s.session, 'existing');
      const r = await q.next(agtMsg(ours.did, (pl) => pl?.content === `reply #${i}`), T, `ours→agt #${i}`);
      assert.equal(r.evidence, 'encrypted');
      assert.deepEqual(r.payload, { type: 'message', content: `reply #${i}` });
    }
    // Two in a row from each side (same sending chain, no DH step between).
    q.send(ours.did, { type: 'burst', n: 1 });
    q.send(ours.did, { type: 'burst', n: 2 });
    const b1 = await receive(fromPeer(q.did, (pl) => pl?.type === 'burst' && pl.n === 1), T, 'burst 1');
    const b2 = await receive(fromPeer(q.did, (pl) => pl?.type === 'burst' && pl.n === 2), T, 'burst 2');
    assert.ok(b1.received_at <= b2.received_at);
    await send(q.did, { type: 'burst-back', n: 1 });
    await send(q.did, { type: 'burst-back', n: 2 });
    await q.next(agtMsg(ours.did, (pl) => pl?.type === 'burst-back' && pl.n === 1), T, 'burst-back 1');
    await q.next(agtMsg(ours.did, (pl) => pl?.type === 'burst-back' && pl.n === 2), T, 'burst-back 2');

    assert.deepEqual(q.events().filter((e) => e.event === 'knock'), [], 'we never KNOCKed the AGT peer');
    assert.deepEqual(q.events().filter((e) => e.event === 'error'), [], q.diag());
    const after_ = await ourStatus();
    assert.equal(after_.sessions, before.sessions + 1, 'one new session on our side');
    assert.equal(after_.stats.undecryptable, before.stats.undecryptable);
    assert.equal(after_.stats.malformed, before.stats.malformed);
    assert.deepEqual(unmatched, [], 'no unexpected inbox messages');
    console.log(`# (b) done in ${Date.now() - t0} ms: first contact from AGT, 8 messages each way`);
  }));
