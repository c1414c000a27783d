// Pairing through the real relay and registry: an operator creates a token on
// a controller node (the engine's controller role), a client node pairs with
// it end-to-end encrypted; a second use of the token is refused with the
// original controller's text. (The local cluster command builds on this.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { createNode } from '../js-host/node-host.js';
import { untilRegistered } from './harness/registered.mjs';

let srv;
const dirs = [];
const nodes = [];

before(async () => {
  srv = await startServers();
});
after(async () => {
  for (const n of nodes) await n.stop().catch(() => {});
  await srv?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function node(name, extra = {}) {
  const stateDir = mkdtempSync(path.join(tmpdir(), `kars-pair-${name}-`));
  dirs.push(stateDir);
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, ...extra });
  nodes.push(n);
  return n;
}

async function registered(n) {
  await untilRegistered(n, 'node', 50);
}

test('generate a token on the controller, pair once, refuse reuse', { timeout: 60_000 }, async () => {
  const ctrl = await node('controller', { role: 'controller', clusterName: 'local-lab' });
  const alice = await node('alice');
  const bob = await node('bob');
  await Promise.all([registered(ctrl), registered(alice), registered(bob)]);

  const gen = await ctrl.callTool('pair_generate', { name: 'alice', slots: 1, capabilities: 'offload,handoff', expires: '1d' });
  const token = gen.details.mesh.token;
  assert.match(token, /^azcp_1_/);
  assert.equal(gen.details.mesh.pairing.phase, 'PendingPairing');

  // Bad input first: nothing is sent, nothing changes.
  assert.equal((await alice.callTool('mesh_pair', {})).content[0].text, '❌ No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: none)');
  assert.equal((await alice.callTool('mesh_pair', { code: 42 })).content[0].text, '❌ No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: code)');
  assert.match((await alice.callTool('mesh_pair', { token: 'azcp_1_!!!' })).content[0].text, /^❌ Invalid pairing token\. Must start with azcp_1_ and contain valid data\. \(token length: 10\)$/);
  // The original's token discovery: nested under `arguments`, or inside any string.
  const paired = await alice.callTool('mesh_pair', { arguments: { note: `please pair with ${token} thanks` } }, { timeoutMs: 40_000 });
  assert.match(paired.content[0].text, /^✅ Paired successfully with kars cluster "local-lab"/);
  assert.match(paired.content[0].text, /\nBudget: 500,000\n/);
  assert.match(paired.content[0].text, /\nRelay RTT: \d+ms \(handshake\)\n/);
  assert.ok(!paired.content[0].text.includes(token.slice(7, 27)), 'no part of the token in the answer');
  assert.equal(paired.details.mesh.pairing.controller_did, ctrl.did);
  assert.deepEqual(paired.details.mesh.pairing.capabilities, ['offload', 'handoff']);

  const reuse = await bob.callTool('mesh_pair', { token }, { timeoutMs: 40_000 });
  assert.equal(reuse.content[0].text, '❌ Pairing rejected by cluster: Pairing is Active — token already consumed or expired');

  const list = await ctrl.callTool('pair_list', {});
  assert.equal(list.details.mesh.pairings[0].bound_did, alice.did);
  assert.equal(list.details.mesh.pairings[0].phase, 'Active');
  // Nothing about the pairing reached the inboxes.
  const inbox = await alice.callTool('mesh_inbox', {});
  assert.equal(inbox.details.mesh.messages.length, 0);
});
