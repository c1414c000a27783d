#!/usr/bin/env node
// What the engine's warm-up (js-host/warm-up.js) does for a fresh node, A/B
// in one run: pairs of fresh kars-mesh clients (tests/drivers/mesh-node.mjs,
// each its own process, one loopback AgentMesh relay and registry), with the
// warm-up off (KARS_MESH_WARM_UP_ROUNDS=0) and on, alternating, CYCLES times
// each, in two starts:
//
//   settled  the first message SETTLE ms after both clients were up (a user's
//            first message comes seconds after the Gateway started)
//   at once  the first message the moment both are up (the warm-up steps
//            aside while the node has traffic of its own)
//
// For each run: the first round trip (KNOCK / X3DH included), the second, the
// mean of the 3rd to 20th, and p50/p99 of the 21st to ROUNDS-th; the table
// gives the medians over the runs of each configuration.
//
// A first pair is not counted (the relay and registry have just started), and
// the order alternates (off first, then on first), so neither side always
// runs first.
//
//   node bench/warm-up.mjs [--cycles=4] [--rounds=220] [--settle=1000] [--no-write] [--wait-idle[=s]]
// Writes bench/WARM-UP-RESULTS.md (unless --no-write).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from '../tests/harness/servers.mjs';
import { spawnMeshNode } from '../tests/drivers/mesh-node-client.mjs';
import { emitResults, runBench, takeOverSignals, within } from './lifecycle.mjs';
import { buildId, median, pct, waitIdle, waitIdleSeconds, wholeOption } from './machine.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt, min) => wholeOption(args, name, dflt, 'bench/warm-up.mjs', min);
const CYCLES = opt('cycles', 4, 1);
const ROUNDS = opt('rounds', 220, 21); // rounds 21 onwards give p50/p99
const SETTLE = opt('settle', 1000, 0);
const NO_WRITE = args.includes('--no-write');
const IDLE_S = waitIdleSeconds(args, 'bench/warm-up.mjs');
const STEP_TIMEOUT = 15_000;
const known = ['--cycles=', '--rounds=', '--settle=', '--no-write', '--wait-idle'];
for (const a of args) {
  if (!known.some((k) => a.startsWith(k))) {
    console.error(`bench/warm-up.mjs: unknown option ${a} (options: --cycles=N --rounds=N --settle=MS --no-write --wait-idle[=S])`);
    process.exit(2);
  }
}

let srv;
let dir;
const live = new Set();
const stopEverything = async () => {
  await Promise.allSettled([...live].map((n) => within(n.stop(), 5000, 'stopping a client')));
  await within(srv?.stop() ?? Promise.resolve(), 5000, 'stopping the relay/registry').catch(() => {});
  try { if (dir) rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
};
takeOverSignals(stopEverything);


async function pair(run, env, settle) {
  const mk = (who, extra = {}) => spawnMeshNode({
    stateDir: path.join(dir, `${run}-${who}`), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: `wu-${run}-${who}`, label: who, env, ...extra,
  }).then((n) => { live.add(n); return n; });
  const [a, b] = await Promise.all([mk('a'), mk('b', { echo: true })]);
  try {
    if (settle) await new Promise((r) => setTimeout(r, settle));
    const rtts = [];
    for (let k = 0; k < ROUNDS; k++) {
      const t0 = performance.now();
      const r = await within(a.request({ cmd: 'send', to: b.did, message: { type: 'ping', k } }), STEP_TIMEOUT, `send ${k}`);
      if (!r.ok) throw new Error(`send ${k} failed: ${r.error}`);
      await a.next((e) => e.event === 'message' && e.payload?.type === 'echo' && e.payload.content?.k === k, STEP_TIMEOUT, `echo ${k}`);
      rtts.push(performance.now() - t0);
    }
    const steady = rtts.slice(20).sort((x, y) => x - y);
    return { first: rtts[0], second: rtts[1], early: rtts.slice(2, 20).reduce((x, y) => x + y, 0) / 18, p50: pct(steady, 50), p99: pct(steady, 99) };
  } finally {
    await Promise.allSettled([a, b].map((n) => within(n.stop(), 10_000, 'stopping a client')));
    live.delete(a); live.delete(b);
  }
}

const CONFIGS = [['off', { KARS_MESH_WARM_UP_ROUNDS: '0' }], ['on', { KARS_MESH_WARM_UP_ROUNDS: '' }]];
const STARTS = [['settled', SETTLE], ['at once', 0]];
const FIELDS = [['first', 'first round trip'], ['second', 'second'], ['early', 'mean of 3rd-20th'], ['p50', 'p50 of 21st on'], ['p99', 'p99 of 21st on']];

async function main() {
  const t0 = Date.now();
  const loadAtStart = os.loadavg().map((x) => x.toFixed(2)).join(' ');
  dir = mkdtempSync(path.join(os.tmpdir(), 'kars-bench-warm-up-'));
  srv = await startServers();
  takeOverSignals(stopEverything); // startServers() added handlers that exit at once
  const res = {};
  let run = 0;
  // A first pair whose figures are not kept: the relay and registry have
  // just started, and their first clients would count against whichever
  // configuration went first.
  if (IDLE_S) await waitIdle(IDLE_S);
  await pair(++run, CONFIGS[0][1], 0);
  for (let c = 0; c < CYCLES; c++) {
    for (const [start, settle] of STARTS) {
      // Off first in even cycles, on first in odd ones.
      for (const [name, env] of c % 2 ? [...CONFIGS].reverse() : CONFIGS) {
        if (IDLE_S) await waitIdle(IDLE_S);
        const r = await pair(++run, env, settle);
        (res[`${start}/${name}`] ??= []).push(r);
        console.log(`# ${start.padEnd(7)} warm-up ${name.padEnd(3)} ${FIELDS.map(([k]) => `${k} ${r[k].toFixed(1)}`).join('  ')}`);
      }
    }
  }
  const L = [];
  L.push('# The engine\'s warm-up: fresh nodes, off against on');
  L.push('');
  L.push(`Written by \`node bench/warm-up.mjs\` on ${new Date().toISOString()} (run took ${((Date.now() - t0) / 1000).toFixed(0)} s). ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}; Node ${process.versions.node}; load average at start ${loadAtStart}.${IDLE_S ? ' Each run waited for idle CPUs first (`--wait-idle`).' : ''} Engine build: ${buildId()}.`);
  L.push('');
  L.push(`Pairs of fresh kars-mesh clients (each its own process, \`tests/drivers/mesh-node.mjs\`) on one loopback AgentMesh relay and registry: A sends, B echoes, A reads the echo; ${ROUNDS} round trips per run. A first pair, not counted, then the warm-up off (\`KARS_MESH_WARM_UP_ROUNDS=0\`) and on, alternating (off first in even cycles, on first in odd ones), ${CYCLES} runs each; *settled*: the first message ${SETTLE} ms after both clients were up; *at once*: the moment they were up. Medians over the runs, in ms:`);
  L.push('');
  L.push(`| start | warm-up | ${FIELDS.map(([, t]) => t).join(' | ')} |`);
  L.push(`|---|---|${FIELDS.map(() => '---:').join('|')}|`);
  for (const [start] of STARTS) {
    for (const [name] of CONFIGS) {
      const rs = res[`${start}/${name}`];
      L.push(`| ${start} | ${name} | ${FIELDS.map(([k]) => median(rs.map((r) => r[k])).toFixed(1)).join(' | ')} |`);
    }
  }
  L.push('');
  emitResults(L.join('\n') + '\n', { dir: BENCH, file: 'WARM-UP-RESULTS.md', noWrite: NO_WRITE });
}

runBench('bench/warm-up.mjs', main, stopEverything);
