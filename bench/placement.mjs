#!/usr/bin/env node
// Where the engine runs, sender and receiver apart: bench:mesh's one-at-a-time
// throughput section (a fresh pair, one warm-up message, then COUNT messages
// C -> D, each mesh_send waiting for the one before; delivered/s = COUNT over
// the time from the first send until D's reader has the last one) for our
// pair in four placements of the two engines, each beside the AGT Python
// pair that fsyncs per frame, all on one loopback relay and registry:
//
//   worker / worker   both engines in their own worker thread (as shipped)
//   main / worker     the sender's engine on its Gateway thread
//                     (KARS_MESH_ENGINE_THREAD=main), the receiver's in a worker
//   worker / main     the other way round
//   main / main       both on their Gateway thread
//
// The placements and the AGT pair take turns in every round (every other
// round in reverse order), and each round's ratio is to the AGT pair of the
// same round. With the engine on the Gateway thread there is no warm-up, and
// a large offload would stall that thread (docs/design/TOOLCHAIN.md): the
// placement is measured here, not offered.
//
//   node bench/placement.mjs [--rounds=4] [--count=2000] [--settle=1000] [--no-write] [--wait-idle[=s]]
// Writes bench/PLACEMENT-RESULTS.md (unless --no-write). Every wait is
// bounded; SIGINT/SIGTERM stop the clients and the relay/registry and exit
// 130/143 without writing.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from '../tests/harness/servers.mjs';
import { spawnMeshNode } from '../tests/drivers/mesh-node-client.mjs';
import { spawnAgtPeer } from '../tests/peers/agt_peer.mjs';
import { emitResults, runBench, takeOverSignals, within } from './lifecycle.mjs';
import { agtBurst, oursBurst } from './throughput.mjs';
import { buildId, median, waitIdle, waitIdleSeconds, wholeOption } from './machine.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const SCRIPT = 'bench/placement.mjs';
const args = process.argv.slice(2);
const opt = (name, dflt, min) => wholeOption(args, name, dflt, SCRIPT, min);
const ROUNDS = opt('rounds', 4, 1);
const COUNT = opt('count', 2000, 1);
const SETTLE = opt('settle', 1000, 0);
const NO_WRITE = args.includes('--no-write');
const IDLE_S = waitIdleSeconds(args, SCRIPT);
const STEP_TIMEOUT = 20_000;
const BURST_TIMEOUT = 120_000;
const known = ['--rounds=', '--count=', '--settle=', '--no-write', '--wait-idle'];
for (const a of args) {
  if (!known.some((k) => a.startsWith(k))) {
    console.error(`${SCRIPT}: unknown option ${a} (options: --rounds=N --count=N --settle=MS --no-write --wait-idle[=S])`);
    process.exit(2);
  }
}

let srv;
let dir;
const live = new Set();
const stopEverything = async () => {
  await Promise.allSettled([...live].map((n) => within(n.stop?.() ?? n.close(), 5000, 'stopping a client')));
  await within(srv?.stop() ?? Promise.resolve(), 5000, 'stopping the relay/registry').catch(() => {});
  try { if (dir) rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
};
takeOverSignals(stopEverything);

const settle = () => new Promise((r) => setTimeout(r, SETTLE));
const thread = (main) => ({ KARS_MESH_ENGINE_THREAD: main ? 'main' : 'worker' });
let run = 0;

/** Our pair, the sender's and the receiver's engine where asked: delivered/s and the receiver's commits per message. */
async function ours(senderMain, receiverMain) {
  run++;
  const mk = (who, env, extra = {}) => spawnMeshNode({
    stateDir: path.join(dir, `${run}-${who}`), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: `pl-${run}-${who}`, label: who, consume: true, env, ...extra,
  }).then((n) => { live.add(n); return n; });
  const [c, d] = await Promise.all([mk('c', thread(senderMain)), mk('d', thread(receiverMain), { buffer: false })]);
  try {
    await settle();
    const t = await oursBurst(c, d, { count: COUNT, window: 1, tag: 'placement', stepTimeout: STEP_TIMEOUT, burstTimeout: BURST_TIMEOUT });
    return { perSec: t.perSec, receiverCommits: t.receiverCommits };
  } finally {
    await Promise.allSettled([c, d].map((n) => within(n.stop(), 10_000, 'stopping a client')));
    live.delete(c); live.delete(d);
  }
}

/** The AGT Python pair with --state (an fsync per frame), as bench/mesh.mjs drives it. */
async function agt() {
  run++;
  const mk = (who) => spawnAgtPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, statePath: path.join(dir, `${run}-agt-${who}.json`) })
    .then((p) => { live.add(p); return p; });
  const [r, s] = await Promise.all([mk('r'), mk('s')]);
  try {
    await settle();
    const t = await agtBurst(r, s, { count: COUNT, tag: 'agt-state', stepTimeout: STEP_TIMEOUT, burstTimeout: BURST_TIMEOUT });
    return { perSec: t.perSec };
  } finally {
    await Promise.allSettled([r, s].map((p) => within(p.close(), 10_000, 'stopping a peer')));
    live.delete(r); live.delete(s);
  }
}

const PAIRS = [
  ['worker / worker', () => ours(false, false)],
  ['main / worker', () => ours(true, false)],
  ['worker / main', () => ours(false, true)],
  ['main / main', () => ours(true, true)],
  ['AGT fsync', agt],
];

async function main() {
  const t0 = Date.now();
  const loadAtStart = os.loadavg().map((x) => x.toFixed(2)).join(' ');
  dir = mkdtempSync(path.join(os.tmpdir(), 'kars-bench-placement-'));
  srv = await startServers();
  takeOverSignals(stopEverything); // startServers() added handlers that exit at once
  const rounds = [];
  for (let k = 0; k < ROUNDS; k++) {
    const row = {};
    for (const [name, fn] of k % 2 ? [...PAIRS].reverse() : PAIRS) {
      if (IDLE_S) await waitIdle(IDLE_S);
      row[name] = await fn();
    }
    rounds.push(row);
    const agtRate = row['AGT fsync'].perSec;
    console.log(`# round ${k + 1}: ${PAIRS.map(([n]) => `${n} ${row[n].perSec.toFixed(0)}/s${n === 'AGT fsync' ? '' : ` ${(row[n].perSec / agtRate).toFixed(2)}x, receiver ${row[n].receiverCommits.toFixed(2)} commits/msg`}`).join('; ')}`);
  }
  const L = [];
  L.push('# Where the engine runs: messages/s one at a time');
  L.push('');
  L.push(`Written by \`node ${SCRIPT}\` on ${new Date().toISOString()} (run took ${((Date.now() - t0) / 1000).toFixed(0)} s). ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}; Node ${process.versions.node}; load average at start ${loadAtStart}.${IDLE_S ? ' Each pair waited for idle CPUs first (`--wait-idle`).' : ''} Engine build: ${buildId()}.`);
  L.push('');
  L.push(`bench:mesh's one-at-a-time throughput section: a fresh pair of kars-mesh clients (each its own process, \`tests/drivers/mesh-node.mjs\`, the receiver reading with \`mesh_inbox\` as an agent does), one warm-up message, then ${COUNT} messages C → D, each \`mesh_send\` waiting for the one before; *delivered/s*: ${COUNT} over the time from the first send until D's reader had the last. Each engine in its own worker thread (as shipped) or on its Gateway thread (\`KARS_MESH_ENGINE_THREAD=main\`: no warm-up, and a large offload would stall that thread). Beside them the AGT Python pair with \`--state\` (an fsync per frame), driven as bench:mesh drives it. One loopback relay and registry (agent-governance-toolkit-core 5.0.0); the first message ${SETTLE} ms after the clients were up; ${ROUNDS} round${ROUNDS === 1 ? '' : 's'}, the pairs taking turns (every other round in reverse order).`);
  L.push('');
  L.push('| sender\'s engine / receiver\'s engine | delivered/s (median) | ÷ AGT fsync pair, each round | receiver\'s commits per message, each round |');
  L.push('|---|---:|---|---|');
  for (const [name] of PAIRS) {
    const rates = rounds.map((r) => r[name].perSec);
    if (name === 'AGT fsync') {
      L.push(`| AGT Python ↔ AGT Python (--state: fsync per frame) | ${median(rates).toFixed(0)} | | |`);
      continue;
    }
    const ratios = rounds.map((r) => (r[name].perSec / r['AGT fsync'].perSec).toFixed(2)).join(', ');
    const commits = rounds.map((r) => r[name].receiverCommits.toFixed(2)).join(', ');
    L.push(`| ${name} | ${median(rates).toFixed(0)} | ${ratios} | ${commits} |`);
  }
  L.push('');
  emitResults(L.join('\n') + '\n', { dir: BENCH, file: 'PLACEMENT-RESULTS.md', noWrite: NO_WRITE });
}

runBench(SCRIPT, main, stopEverything);
