// Red-team regressions, findings 6 and 7 (state growth under floods), through
// the REAL relay and registry. Attackers are raw AgentMesh clients
// (tests/peers/raw_peer.mjs) connected as their own identities; the relay does
// not bind `from`, so one connection can speak for any number of made-up DIDs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { fakeDid, rawPeer } from './peers/raw_peer.mjs';
import { createNode } from '../js-host/node-host.js';
import { untilRegistered } from './harness/registered.mjs';
import { recordKeys } from './harness/state-db.mjs';

let srv;
const dirs = [];
const nodes = new Set();
const peers = new Set();

before(async () => {
  srv = await startServers();
});
after(async () => {
  for (const p of peers) await p.close().catch(() => {});
  for (const n of nodes) await n.stop().catch(() => {});
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tmp(name) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-rt-flood-${name}-`));
  dirs.push(d);
  return d;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function start(name, extra = {}) {
  const n = await createNode({ stateDir: tmp(name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.add(n);
  return untilRegistered(n, name);
}

async function raw() {
  const p = await rawPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  peers.add(p);
  return p;
}

/** Stored record keys of a node (its state database). */
const records = (node) => recordKeys(node.stateDir);
const sessionRecords = (node) => recordKeys(node.stateDir, 'session/');

/** Wait until f() stays the same for `quietMs` (or `maxMs` passed); returns its last value. */
async function settle(f, { quietMs = 2500, maxMs = 30_000 } = {}) {
  const until = Date.now() + maxMs;
  let last = f();
  let since = Date.now();
  while (Date.now() < until) {
    await sleep(250);
    const v = f();
    if (v !== last) {
      last = v;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) break;
  }
  return last;
}

async function relayRouted() {
  const h = await (await fetch(`${srv.relayUrl}/health`)).json();
  return h.stats?.messages_routed ?? 0;
}

/** Poll `node`'s inbox (peek, read entries included) until an entry from `from` satisfies `pred`. */
async function waitInbox(node, from, pred, ms = 20_000) {
  const until = Date.now() + ms;
  let msgs = [];
  while (Date.now() < until) {
    msgs = (await node.callTool('mesh_inbox', { from, limit: 50, unread_only: false })).details.mesh.messages;
    if (msgs.some(pred)) return true;
    await sleep(300);
  }
  return false;
}
const says = (text) => (m) => JSON.stringify(m.payload).includes(text);

test('finding 6: 500 plaintext pair_requests from made-up DIDs with bad tokens grow the controller\'s stored records by at most 5', { timeout: 150_000 }, async () => {
  // The controller's own word that it handled each forged request (its log).
  const refused = new Set();
  const log = (_level, m) => {
    const r = /^pair_request from (did:mesh:[0-9a-f]{32}): refused$/.exec(m);
    if (r) refused.add(r[1]);
  };
  const ctrl = await start('ctrl6', { role: 'controller', clusterName: 'rt-lab', log });
  // A real pairing exists, so the ledger is not empty.
  await ctrl.callTool('pair_generate', { name: 'someone', slots: 1, capabilities: 'offload', expires: '1d' });
  const before = await settle(() => records(ctrl).length, { quietMs: 1000 });

  const attacker = await raw();
  const routed0 = await relayRouted();
  const forged = new Set();
  for (let i = 0; i < 500; i++) {
    const from = fakeDid();
    forged.add(from);
    await attacker.plaintext(ctrl.did, {
      type: 'pair_request',
      secret: randomBytes(32).toString('base64url'),
      pubkey_ed25519: randomBytes(32).toString('base64'),
      display_name: `external-${i}`,
      capabilities_requested: ['offload', 'handoff'],
    }, { from, dialect: i % 2 ? 'payload' : 'ts' });
  }
  // Every frame routed by the relay and handled by the controller, then its
  // state settles: without that, "grew by at most 5" would also pass for
  // frames that never arrived.
  const routedBy = Date.now() + 20_000;
  let routed = 0;
  while ((routed = (await relayRouted()) - routed0) < 500 && Date.now() < routedBy) await sleep(200);
  assert.ok(routed >= 500, `the relay routed ${routed} of the 500 forged pair_requests to the controller`);
  const handledBy = Date.now() + 60_000;
  while ([...forged].some((d) => !refused.has(d)) && Date.now() < handledBy) await sleep(200);
  const unhandled = [...forged].filter((d) => !refused.has(d)).length;
  assert.equal(unhandled, 0, `the controller refused ${500 - unhandled} of the 500 forged pair_requests (no log line for the others)`);
  const after = await settle(() => records(ctrl).length);
  assert.ok(after - before <= 5, `the controller's stored records grew from ${before} to ${after} (${after - before} new) after 500 forged pair_requests`);
  // The controller still works.
  assert.equal((await ctrl.callTool('pair_list', {})).details.mesh.pairings.length, 1);
});

test('finding 7: 300 fresh identities opening sessions leave the victim\'s session records bounded, and a known peer still talks both ways', { timeout: 120_000 }, async () => {
  const victim = await start('victim7');
  const friend = await start('friend7');
  // A known peer: a session both ways before the flood.
  await friend.callTool('mesh_send', { to: victim.did, message: 'hello before the flood' });
  assert.ok(await waitInbox(victim, friend.did, says('hello before the flood')), 'friend → victim before the flood');
  await victim.callTool('mesh_send', { to: friend.did, message: 'hello back' });
  assert.ok(await waitInbox(friend, victim.did, says('hello back')), 'victim → friend before the flood');
  const sessions0 = sessionRecords(victim).length;

  // 300 fresh identities, 10 at a time: connect (PoP), KNOCK, one message, leave.
  const N = 300;
  let done = 0;
  const failures = [];
  async function one(i) {
    const p = await rawPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, graceMs: 50 });
    try {
      const s = await p.openSession(victim.did);
      await p.encrypted(s, { type: 'message', content: `flood ${i}` });
      await sleep(50);
    } finally {
      await p.close();
    }
    done++;
  }
  for (let i = 0; i < N; i += 10) {
    const rs = await Promise.allSettled(Array.from({ length: Math.min(10, N - i) }, (_, k) => one(i + k)));
    for (const r of rs) if (r.status === 'rejected') failures.push(String(r.reason?.message ?? r.reason));
  }
  assert.ok(done >= N - 5, `only ${done} of ${N} flood identities got their frames out: ${failures.slice(0, 3).join('; ')}`);
  const sessions = await settle(() => sessionRecords(victim).length);
  assert.ok(sessions - sessions0 <= 100, `the victim keeps ${sessions} session records (${sessions - sessions0} new) after ${N} strangers opened sessions; expected a cap well under ${N}`);

  // The known peer still gets through, both ways.
  const tag = randomBytes(4).toString('hex');
  await friend.callTool('mesh_send', { to: victim.did, message: `after the flood ${tag}` });
  assert.ok(await waitInbox(victim, friend.did, says(`after the flood ${tag}`)), 'friend → victim after the flood did not arrive');
  await victim.callTool('mesh_send', { to: friend.did, message: `reply ${tag}` });
  assert.ok(await waitInbox(friend, victim.did, says(`reply ${tag}`)), 'victim → friend after the flood did not arrive');
});
