// js-host/warm-up.js: the throwaway pair of engines that converses in the
// engine's thread after start, so a node's first messages meet optimized code.
// The real core throughout; its effect on latency is measured by bench:mesh
// (first round trips, p99), not asserted here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadCore } from '../js-host/core.js';
import { warmUp, whenQuiet, WARM_UP_ROUNDS, QUIET_MS } from '../js-host/warm-up.js';
import { createNode } from '../js-host/node-host.js';

const key = () => Buffer.alloc(32, 7).toString('base64');

test('warm-up: two throwaway engines hold an encrypted conversation of N round trips, one engine call per slice', async (t) => {
  const made = [];
  const makeCore = async (o) => {
    made.push(o.storage);
    return loadCore({ ...o, log: () => {} });
  };
  // Nothing outside the pair may be used: no sockets, no HTTP.
  const realFetch = globalThis.fetch;
  const RealWebSocket = globalThis.WebSocket;
  globalThis.fetch = () => { throw new Error('the warm-up made an HTTP request'); };
  globalThis.WebSocket = class { constructor() { throw new Error('the warm-up opened a socket'); } };
  t.after(() => { globalThis.fetch = realFetch; globalThis.WebSocket = RealWebSocket; });

  let slices = 0;
  let ticks = 0;
  const tick = setInterval(() => ticks++, 0);
  const r = await warmUp(makeCore, { rounds: 6, stateKey: key, next: (fn) => { slices++; setImmediate(fn); } });
  clearInterval(tick);

  assert.equal(r.error, undefined, `the warm-up failed: ${r.error}`);
  assert.equal(r.rounds, 6);
  assert.equal(made.length, 2, 'two engines of their own');
  // A session was set up (KNOCK, accepted) and every message went encrypted:
  // 12 messages and their receipts, as ratchet frames.
  assert.equal(r.routed.knock, 1, JSON.stringify(r.routed));
  assert.equal(r.routed.knock_accept, 1, JSON.stringify(r.routed));
  assert.ok(r.routed.message >= 12, `12 messages at least: ${JSON.stringify(r.routed)}`);
  // Sliced: one engine call per turn, and the thread's own timers ran between.
  assert.equal(slices, r.calls);
  assert.ok(r.calls > 6 * 4, `engine calls: ${r.calls}`);
  assert.ok(ticks > 0, 'the event loop turned during the warm-up');
  // Each engine kept its records in its own storage (identity, sessions), dropped at the end.
  for (const storage of made) assert.deepEqual([...storage.list('')], [], 'dropped with the pair');
});

test('warm-up: stops at the next slice once told to, without an error', async () => {
  let slices = 0;
  const r = await warmUp((o) => loadCore({ ...o, log: () => {} }), {
    rounds: 50,
    stateKey: key,
    next: (fn) => { slices++; setImmediate(fn); },
    stopped: () => slices > 30,
  });
  assert.equal(r.error, undefined);
  assert.equal(r.stopped, true);
  assert.ok(r.rounds < 50, `stopped early: ${r.rounds} round trips`);
  assert.equal(r.calls, 30);
});

test('warm-up: a pair that cannot converse reports why instead of hanging', async () => {
  // A core whose engine never answers a tool call: nothing left to run.
  const r = await warmUp(async () => ({ engine: { handle: () => [] } }), { rounds: 3, stateKey: key });
  assert.equal(r.rounds, 0);
  assert.match(r.error, /mesh_register on a: nothing left to run/);
});

test('warm-up: steps aside while the node has events of its own, and goes on once they stop', async () => {
  let last = performance.now();
  const busy = setInterval(() => { last = performance.now(); }, 5); // the node's own traffic
  let ran = 0;
  const next = whenQuiet(() => last);
  next(() => ran++);
  await new Promise((r) => setTimeout(r, 4 * QUIET_MS));
  assert.equal(ran, 0, 'no slice while events keep coming');
  clearInterval(busy);
  const quietFrom = performance.now();
  while (!ran && performance.now() - quietFrom < 2000) await new Promise((r) => setTimeout(r, 5));
  assert.equal(ran, 1, 'the slice ran once the node was quiet');
  assert.ok(performance.now() - quietFrom >= QUIET_MS - 10, 'not before QUIET_MS of quiet');
});

function tmpState(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-warm-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'state');
}

async function nodeLogs(t, env) {
  const saved = process.env.KARS_MESH_WARM_UP_ROUNDS;
  if (env === undefined) delete process.env.KARS_MESH_WARM_UP_ROUNDS;
  else process.env.KARS_MESH_WARM_UP_ROUNDS = env;
  const logs = [];
  let node;
  try {
    // The worker copies the environment when it starts.
    node = await createNode({ stateDir: tmpState(t), relayUrl: 'ws://127.0.0.1:9', registryUrl: 'http://127.0.0.1:9', log: (l, m) => logs.push(`${l}: ${m}`) });
  } finally {
    if (saved === undefined) delete process.env.KARS_MESH_WARM_UP_ROUNDS;
    else process.env.KARS_MESH_WARM_UP_ROUNDS = saved;
  }
  t.after(() => node.stop());
  return { node, logs };
}

const waitFor = async (pred, ms) => {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  return pred();
};

test('a node runs the warm-up in its engine thread after start, and answers tools meanwhile', { timeout: 60_000 }, async (t) => {
  const { node, logs } = await nodeLogs(t, undefined);
  // A tool call during the warm-up is answered (the warm-up yields between slices).
  const id = await node.callTool('mesh_identity', {});
  assert.match(id.details?.mesh?.did ?? '', /^did:mesh:[0-9a-f]{32}$/);
  const line = new RegExp(`debug: host: engine warm-up: ${WARM_UP_ROUNDS} round trips`);
  assert.ok(await waitFor(() => logs.some((l) => line.test(l)), 30_000), `no warm-up line in:\n${logs.join('\n')}`);
  assert.ok(!logs.some((l) => /warm-up stopped/.test(l)), logs.join('\n'));
  // The node's own state holds nothing of the pair (their names are warm-up-a/b).
  const identity = await node.callTool('mesh_identity', {});
  assert.equal(identity.details.mesh.did, id.details.mesh.did);
  assert.ok(!JSON.stringify(identity).includes('warm-up-'), JSON.stringify(identity));
});

test('KARS_MESH_WARM_UP_ROUNDS=0 turns it off; a bad value is named once and the default used', { timeout: 60_000 }, async (t) => {
  const off = await nodeLogs(t, '0');
  await off.node.callTool('mesh_identity', {});
  assert.ok(await waitFor(() => off.logs.some((l) => l === 'debug: host: engine warm-up off (KARS_MESH_WARM_UP_ROUNDS=0)'), 30_000), off.logs.join('\n'));
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(!off.logs.some((l) => /warm-up: \d+ round trips|warm-up stopped/.test(l)), off.logs.join('\n'));

  const bad = await nodeLogs(t, 'lots');
  assert.ok(await waitFor(() => bad.logs.some((l) => /warm-up: \d+ round trips/.test(l)), 30_000), bad.logs.join('\n'));
  // More batches of the node's own: the warning stays one.
  for (let i = 0; i < 3; i++) await bad.node.callTool('mesh_identity', {});
  const warned = bad.logs.filter((l) => l.startsWith('warn: ') && l.includes('KARS_MESH_WARM_UP_ROUNDS="lots" is not a whole number') && l.includes('set 0 to turn the warm-up off'));
  assert.equal(warned.length, 1, bad.logs.join('\n'));
});

test('a node stopped during its warm-up stops at once and says nothing of it', { timeout: 60_000 }, async (t) => {
  const { node, logs } = await nodeLogs(t, '100000'); // far more than it gets to
  await node.callTool('mesh_identity', {});
  await new Promise((r) => setTimeout(r, 300)); // under way
  const t0 = Date.now();
  await node.stop();
  assert.ok(Date.now() - t0 < 10_000, `stop took ${Date.now() - t0} ms`);
  assert.ok(!logs.some((l) => /warm-up/.test(l)), logs.join('\n'));
});
