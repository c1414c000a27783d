// Where a round trip's CPU goes, by process and thread: our pair beside the
// AGT Python pair that fsyncs per frame, on one loopback relay, in one run.
//
// Why: on a 2-core machine a round trip's tail (p99) depends on how much CPU
// the round trip needs in all, and on which threads, as much as on its own
// path. bench/mesh.mjs times the round trip; this script reads, from
// /proc/<pid>/task/<tid>/stat, the CPU time every process of the run used
// during the timed round trips (this bench process and its descendants: the
// peers, the relay and registry) plus the kernel's worker threads
// (kworker: block I/O and writeback for the fsyncs), and divides it by the
// round trips. Same clients and the same round trip as bench/mesh.mjs:
// A sends, B decrypts and echoes, A decrypts the echo; ours read with
// `mesh_inbox` mark_read (`--consume`), as an agent reads.
//
//   node bench/cpu.mjs [--rounds=400] [--repeat=4] [--settle=1000] [--no-write] [--wait-idle[=s]]
//   --repeat     runs of each pair, taking turns (every other round in reverse order)
//   --wait-idle  first wait (up to 300 s, or =s) until the CPUs are idle
// Writes bench/CPU-RESULTS.md (unless --no-write).
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from '../tests/harness/servers.mjs';
import { spawnAgtPeer } from '../tests/peers/agt_peer.mjs';
import { spawnMeshNode } from '../tests/drivers/mesh-node-client.mjs';
import { takeOverSignals, within } from './lifecycle.mjs';
import { buildId, cpuIdleFraction, summary, waitIdle, waitIdleSeconds, wholeOption } from './machine.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const known = ['--rounds=', '--repeat=', '--settle=', '--no-write', '--wait-idle'];
for (const a of args) {
  if (!known.some((k) => a === k || a.startsWith(k))) {
    console.error(`bench/cpu.mjs: unknown option ${a} (options: --rounds=N --repeat=N --settle=MS --no-write --wait-idle[=s])`);
    process.exit(2);
  }
}
const opt = (name, dflt, min = 0) => wholeOption(args, name, dflt, 'bench/cpu.mjs', min);
const ROUNDS = opt('rounds', 400, 10);
const REPEAT = opt('repeat', 4, 1);
const SETTLE = opt('settle', 1000);
const WARMUP = 20;
const NO_WRITE = args.includes('--no-write');
const IDLE_S = waitIdleSeconds(args, 'bench/cpu.mjs');
const STEP_TIMEOUT = 10_000;
const TICK_MS = 1000 / 100; // USER_HZ: /proc/stat and /proc/<pid>/stat count in 1/100 s

/** Every process under `root` (this bench: its peers, relay and registry). */
function descendants(root) {
  const parent = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, ppid] of parent) if (!out.has(pid) && out.has(ppid)) { out.add(pid); grew = true; }
  }
  return out;
}

/** What a process is, from its command line. */
function role(pid) {
  if (pid === process.pid) return 'bench process';
  let cmd = '';
  try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '); } catch { /* gone */ }
  if (cmd.includes('mesh-node.mjs') || cmd.includes('agt_peer')) return 'peer';
  if (cmd.includes('agentmesh.relay')) return 'relay';
  if (cmd.includes('agentmesh.registry')) return 'registry';
  return 'other';
}

/** CPU ticks (user + system) by "role / thread kind", over this run's processes and the kernel's workers. */
function cpuByThread() {
  const out = {};
  const add = (k, v) => { out[k] = (out[k] ?? 0) + v; };
  const mine = descendants(process.pid);
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pid = Number(d);
    let tasks;
    try { tasks = readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const tid of tasks) {
      let st;
      try { st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'); } catch { continue; }
      const name = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(f[11]) + Number(f[12]);
      if (mine.has(pid)) add(`${role(pid)} / ${name.replace(/[\d.]+$/, '')}`, ticks);
      else if (name.startsWith('kworker')) add('kernel / kworker', ticks);
    }
  }
  return out;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const settle = () => new Promise((r) => setTimeout(r, SETTLE));

let srv;
let dir;
let live = [];
async function stopAll() {
  const ps = live;
  live = [];
  await Promise.allSettled(ps.map((p) => within(p.stop ? p.stop() : p.close(), 10_000, 'stopping a peer')));
}
async function stopEverything() {
  await stopAll();
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}

/** One run of a pair: `ROUNDS` timed round trips and the CPU they used. */
async function runPair(kind, w) {
  let a;
  let b;
  let send;
  if (kind === 'ours') {
    const mk = (name, extra = {}) => spawnMeshNode({
      stateDir: path.join(dir, `${w}-${name}`), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: `cpu-${w}-${name}`, label: name, consume: true, ...extra,
    });
    [a, b] = await Promise.all([mk('ours-a'), mk('ours-b', { echo: true })]);
    send = async (k) => {
      const r = await a.request({ cmd: 'send', to: b.did, message: { type: 'ping', k } });
      if (!r.ok) throw new Error(`ours: send failed: ${r.error}`);
    };
  } else {
    const mk = (name, extra = {}) => spawnAgtPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, statePath: path.join(dir, `${w}-${name}.json`), ...extra });
    [a, b] = await Promise.all([mk('agt-p'), mk('agt-q', { echo: true })]);
    send = async (k) => a.send(b.did, { type: 'ping', k });
  }
  live.push(a, b);
  await settle();
  const rtts = [];
  let before;
  let t0;
  for (let k = 0; k < WARMUP + ROUNDS; k++) {
    if (k === WARMUP) {
      before = cpuByThread();
      t0 = performance.now();
    }
    const s = performance.now();
    await within(send(k), STEP_TIMEOUT, `${kind}: send ${k}`);
    await a.next((e) => e.event === 'message' && e.payload?.type === 'echo' && e.payload.content?.k === k, STEP_TIMEOUT, `${kind}: echo ${k}`);
    if (k >= WARMUP) rtts.push(performance.now() - s);
  }
  const wallMs = performance.now() - t0;
  const after = cpuByThread();
  await stopAll();
  const perRt = {};
  for (const [k, v] of Object.entries(after)) {
    const d = ((v - (before[k] ?? 0)) * TICK_MS) / ROUNDS;
    if (d > 0) perRt[k] = d;
  }
  const total = Object.values(perRt).reduce((x, y) => x + y, 0);
  const { p50, p99, max } = summary(rtts);
  return { p50, p99, max, cpuMs: total, cores: (total * ROUNDS) / wallMs, perRt };
}

function markdown(env, runs, wallMs) {
  const f2 = (x) => x.toFixed(2);
  const kinds = { ours: 'kars-mesh ↔ kars-mesh', agt: 'AGT Python ↔ AGT Python (--state: fsync per frame)' };
  const lines = [
    '# Where a round trip\'s CPU goes',
    '',
    `Written by \`node bench/cpu.mjs\` on ${new Date().toISOString()} (run took ${(wallMs / 1000).toFixed(1)} s).`,
    '',
    `Engine build: ${env.build}.`,
    '',
    `Machine: ${env.cpu}; Node ${process.version}; load average at start ${env.load}; ${env.idle}.`,
    '',
    `Each pair: two fresh clients on one loopback AgentMesh relay (tests/harness/servers.mjs), the first message ${SETTLE} ms after both were up,`,
    `${WARMUP} round trips not counted, then ${ROUNDS} timed ones (A sends, B decrypts and echoes, A decrypts the echo; ours read with`,
    '`mesh_inbox` mark_read, as an agent reads). CPU is user + system time from /proc over the timed round trips, of this',
    'bench process and every process under it (the two peers, the relay, the registry), by thread, plus the kernel\'s',
    'kworker threads (block I/O and writeback of the fsyncs; they serve the whole machine). Divided by the round trips.',
    `The pairs take turns, ${REPEAT} runs each (every other round in reverse order). /proc counts in 10 ms ticks: a thread under`,
    `${f2((TICK_MS / ROUNDS) * 2)} ms per round trip is not told apart from zero.`,
    '',
    '| run | pair | RTT p50 (ms) | RTT p99 (ms) | RTT max (ms) | CPU per round trip (ms) | cores busy |',
    '|---|---|---:|---:|---:|---:|---:|',
  ];
  runs.forEach((r, i) => lines.push(`| ${Math.floor(i / 2) + 1} | ${kinds[r.kind]} | ${f2(r.p50)} | ${f2(r.p99)} | ${f2(r.max)} | ${f2(r.cpuMs)} | ${f2(r.cores)} |`));
  lines.push('', 'Medians of the runs, CPU per round trip by thread (ms; both peers of a pair together):', '');
  for (const kind of ['ours', 'agt']) {
    const rs = runs.filter((r) => r.kind === kind);
    const keys = [...new Set(rs.flatMap((r) => Object.keys(r.perRt)))];
    const rows = keys.map((k) => [k, median(rs.map((r) => r.perRt[k] ?? 0))]).filter(([, v]) => v > 0).sort((x, y) => y[1] - x[1]);
    lines.push(`- **${kinds[kind]}**: p50 ${f2(median(rs.map((r) => r.p50)))} ms, p99 ${f2(median(rs.map((r) => r.p99)))} ms; CPU ${f2(median(rs.map((r) => r.cpuMs)))} ms per round trip (${f2(median(rs.map((r) => r.cores)))} cores): ${rows.map(([k, v]) => `${k} ${f2(v)}`).join(', ')}`);
  }
  lines.push('');
  return lines.join('\n');
}

async function main() {
  const wall0 = performance.now();
  const env = { build: buildId(), cpu: `${os.cpus()[0]?.model ?? '?'} × ${os.cpus().length}`, load: os.loadavg().map((x) => x.toFixed(2)).join(' ') };
  if (IDLE_S) {
    console.log(`# waiting (up to ${IDLE_S} s) for idle CPUs ...`);
    env.idle = await waitIdle(IDLE_S);
  } else {
    try { env.idle = `idle ${(100 * (await cpuIdleFraction(1000))).toFixed(0)}% at start`; } catch { env.idle = '?'; }
  }
  console.log(`# ${env.cpu}; ${env.idle}`);
  dir = mkdtempSync(path.join(os.tmpdir(), 'kars-bench-cpu-'));
  srv = await startServers();
  takeOverSignals(stopEverything); // startServers() added handlers that exit at once
  const runs = [];
  let w = 0;
  for (let rep = 0; rep < REPEAT; rep++) {
    for (const kind of rep % 2 ? ['agt', 'ours'] : ['ours', 'agt']) {
      const r = { kind, ...(await runPair(kind, ++w)) };
      runs.push(r);
      console.log(`# ${kind}: p50 ${r.p50.toFixed(2)} p99 ${r.p99.toFixed(2)} ms; CPU ${r.cpuMs.toFixed(2)} ms per round trip (${r.cores.toFixed(2)} cores)`);
    }
  }
  const md = markdown(env, runs, performance.now() - wall0);
  console.log(`\n${md}`);
  if (!NO_WRITE) {
    writeFileSync(path.join(BENCH, 'CPU-RESULTS.md'), md);
    console.log('# wrote bench/CPU-RESULTS.md');
  }
}

takeOverSignals(stopEverything);
try {
  await main();
} finally {
  await stopEverything();
}
process.exit(0);
