#!/usr/bin/env node
// Offload throughput on ONE loopback relay (the real AgentMesh relay and
// registry, agent-governance-toolkit-core 5.0.0 from .venv), in one run:
//
//   ours    a client node and a controller node (this process, as in
//           tests/offload.large.test.mjs) and the sandbox the controller
//           starts (its own process, js-host/sandbox-main.js) with an --exec
//           that copies the input to an output: one input file of
//           SIZE bytes goes to the sandbox, one output of SIZE bytes comes
//           back, both SHA-256 checked.
//   anchor  the same bytes between two AGT Python peers
//           (tests/peers/agt_peer.py, in memory, driven as bench/mesh.mjs
//           drives them), cut the way our transfer cuts a file: messages
//           carrying 512 KiB of base64 each, P -> Q, then Q -> P.
//
// SIZE defaults to 31,454,208 bytes (30 MiB less 3 KiB), the largest file an
// offload takes (80 chunks of 512 KiB once base64-encoded).
//
// Directions, timed on this machine's one clock:
//   upload    from the client handling the sandbox's hello (the inputs start
//             going out then; the event's engine time) until the --exec
//             starts in the sandbox (it runs only once every input arrived,
//             was hash-checked and the go-ahead came; the exec writes the
//             time into a marker file it returns)
//   download  from the --exec's end (marker file) until this process sees
//             the client report the output received (hash-checked, on disk)
//   anchor    from writing the first send command to the sender until the
//             receiver printed the last message
//
//   node bench/offload.mjs [--runs=2] [--size=31454208] [--no-write] [--wait-idle[=s]]
//   --wait-idle  before each run, wait (up to 300 s, or =s) for idle CPUs
// Writes bench/OFFLOAD-RESULTS.md (unless --no-write). Every wait is
// bounded; SIGINT/SIGTERM stop the nodes, sandboxes, peers and the
// relay/registry and exit 130/143 without writing. A failed run makes the
// exit code 1 (its message is in the results file).
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { startServers, VENV_PYTHON } from '../tests/harness/servers.mjs';
import { spawnAgtPeer } from '../tests/peers/agt_peer.mjs';
import { takeOverSignals, within, yieldToLoop } from './lifecycle.mjs';
import { buildId, cpuIdleFraction, procStat, waitIdle, waitIdleSeconds, wholeOption } from './machine.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt, min = 1) => wholeOption(args, name, dflt, 'bench/offload.mjs', min);
const MAX_FILE = 31_454_208;
const SIZE = opt('size', MAX_FILE);
const RUNS = opt('runs', 2);
const NO_WRITE = args.includes('--no-write');
const IDLE_S = waitIdleSeconds(args, 'bench/offload.mjs');
const STEP_TIMEOUT = 40_000;
const RUN_TIMEOUT = 300_000;
const CHUNK_B64 = 512 * 1024; // base64 characters per anchor message, as our chunks
const CHUNK_RAW = (CHUNK_B64 / 4) * 3;
const MiB = 1024 * 1024;

const sha = (b) => createHash('sha256').update(b).digest('hex');
const f1 = (x) => (x == null ? '—' : x.toFixed(1));
const f2 = (x) => (x == null ? '—' : x.toFixed(2));
const pctOf = (cpuS, ms) => (cpuS == null || !ms ? '—' : `${Math.round((cpuS / (ms / 1000)) * 100)}`);
const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let srv;
let dir;
let sandboxDir;
const cleanup = [];
const stopAll = () => within(Promise.allSettled(cleanup.splice(0).map((f) => f())), 15_000, 'stopping the clients').catch(() => {});
const stopEverything = async () => {
  await stopAll();
  if (sandboxDir) await within(killSandboxes(sandboxDir, { graceMs: 2000 }), 5000, 'stopping the sandboxes').catch(() => {});
  await within(srv?.stop() ?? Promise.resolve(), 5000, 'stopping the relay/registry').catch(() => {});
  try { if (dir) rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
};
takeOverSignals(stopEverything);

async function untilRegistered(node, name) {
  const deadline = Date.now() + STEP_TIMEOUT;
  while (Date.now() < deadline) {
    const m = (await node.callTool('mesh_identity', {}, { timeoutMs: STEP_TIMEOUT })).details.mesh;
    if (m.registered && m.connected) return node;
    await sleep(100);
  }
  throw new Error(`${name} did not register and connect within ${STEP_TIMEOUT / 1000} s`);
}

async function startNode(name, extra = {}) {
  const node = await createNode({ stateDir: path.join(dir, name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  cleanup.push(() => node.stop());
  return untilRegistered(node, name);
}

// ── ours: one offload, SIZE bytes each way ────────────────────────────────
async function ours(run, input, inputSha) {
  const ctrl = await startNode(`ctrl-${run}`, {
    role: 'controller',
    clusterName: 'bench',
    sandboxes: {
      dir: sandboxDir,
      // Marker files: when the exec started (every input had arrived) and ended.
      exec: 'date +%s%3N > "$KARS_OUTPUT_DIR/exec-started-ms" && cp "$KARS_INPUT_DIR/input.bin" "$KARS_OUTPUT_DIR/output.bin" && date +%s%3N > "$KARS_OUTPUT_DIR/exec-ended-ms"',
      progressMs: 5000,
    },
  });
  const clientDir = path.join(dir, `client-${run}`);
  const client = await startNode(`client-${run}`);
  const gen = await ctrl.callTool('pair_generate', { name: `bench-${run}`, slots: 1, capabilities: 'offload', expires: '1d' }, { timeoutMs: STEP_TIMEOUT });
  const token = gen.details?.mesh?.token;
  if (!token) throw new Error(`pair_generate: ${gen.content?.[0]?.text}`);
  const paired = await client.callTool('mesh_pair', { token }, { timeoutMs: STEP_TIMEOUT });
  if (!/^✅ Paired/.test(paired.content[0].text)) throw new Error(`mesh_pair: ${paired.content[0].text}`);

  // This thread plays the Gateway's: the engines run in their own threads.
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  const t0 = Date.now();
  const sub = await client.callTool('cloud_offload', { task: 'copy input.bin to output.bin', files: [input] }, { timeoutMs: STEP_TIMEOUT });
  if (!/^☁️ Offload submitted/.test(sub.content[0].text)) throw new Error(`cloud_offload: ${sub.content[0].text}`);
  const events = []; // {seq, at_ms, phase, text, seen_ms}
  let after = 0;
  let last;
  const deadline = t0 + RUN_TIMEOUT;
  for (;;) {
    if (Date.now() > deadline) throw new Error(`offload not done after ${RUN_TIMEOUT / 1000} s; events: ${events.map((e) => `${e.phase}: ${e.text}`).join(' | ')}`);
    const r = await client.callTool('offload_status', { wait_seconds: 20, after_events: after }, { timeoutMs: STEP_TIMEOUT });
    const seen = Date.now();
    last = r.details.mesh;
    for (const e of last.events ?? []) if (e.seq > after) events.push({ ...e, seen_ms: seen });
    after = last.events_total ?? after;
    if (['done', 'error'].includes(last.phase)) break;
    await yieldToLoop();
  }
  delay.disable();
  if (last.phase !== 'done') throw new Error(`offload ended in ${last.phase}: ${JSON.stringify(last.error ?? last.events?.at(-1))}`);
  const outs = Object.fromEntries((last.outputs ?? []).map((o) => [o.name, o]));
  const out = outs['output.bin'];
  if (!out) throw new Error(`no output.bin among the outputs: ${Object.keys(outs).join(', ')}`);
  const got = readFileSync(path.join(clientDir, 'files', out.path));
  if (got.length !== SIZE || sha(got) !== inputSha) throw new Error(`output.bin differs from the input (${got.length} bytes)`);
  const marker = (name) => {
    const o = outs[name];
    if (!o) throw new Error(`marker ${name} not returned`);
    return Number(readFileSync(path.join(clientDir, 'files', o.path), 'utf8').trim());
  };
  const execStarted = marker('exec-started-ms');
  const execEnded = marker('exec-ended-ms');
  const hello = events.find((e) => e.phase === 'acknowledged');
  const received = events.find((e) => e.phase === 'returning' && e.text.startsWith('received output.bin'));
  if (!hello || !received) throw new Error(`events missing (hello ${!!hello}, output received ${!!received}): ${events.map((e) => `${e.phase}: ${e.text}`).join(' | ')}`);
  const upMs = execStarted - hello.at_ms;
  const downMs = received.seen_ms - execEnded;
  const upRelayS = relayCpu?.between(hello.at_ms, execStarted) ?? null;
  const downRelayS = relayCpu?.between(execEnded, received.seen_ms) ?? null;
  // Everything else: this process (client and controller), the sandbox, and
  // whatever else ran on the machine meanwhile.
  const upOthersS = relayCpu?.othersBetween(hello.at_ms, execStarted) ?? null;
  const downOthersS = relayCpu?.othersBetween(execEnded, received.seen_ms) ?? null;
  const doneAt = events.find((e) => e.phase === 'done')?.seen_ms ?? Date.now();
  // The longest single engine call of each node since its start: what a
  // tool call or frame that came meanwhile waited behind.
  const maxCallMs = [client, ctrl].map((n) => n.storeStats()?.maxCallMs ?? null);
  await Promise.allSettled([client.stop(), ctrl.stop()]);
  return {
    upMs,
    downMs,
    upMiBs: SIZE / MiB / (upMs / 1000),
    downMiBs: SIZE / MiB / (downMs / 1000),
    upRelayS,
    downRelayS,
    upOthersS,
    downOthersS,
    setupMs: hello.at_ms - t0, // submit until the sandbox's hello: validate, spawn, connect
    execMs: execEnded - execStarted,
    totalMs: doneAt - t0,
    // The client's handle() of the hello includes reading and chunking the
    // input: how long its event loop could not answer (seen − engine time).
    helloStallMs: hello.seen_ms - hello.at_ms,
    loopP99Ms: delay.percentile(99) / 1e6,
    loopMaxMs: delay.max / 1e6,
    maxCallMs,
  };
}

// ── the relay's CPU: how much of the machine the relay itself takes ───────
// Its user + system time from /proc/<pid>/stat, sampled every 50 ms on this
// clock (Date.now()), so any window (an upload, an anchor direction) can be
// read afterwards. On a 2-core machine the relay's share bounds what any
// client can get through it: at 100 % of one core it forwards at most
// 1 / (its CPU seconds per MiB) MiB/s of such frames.
const TICK_S = 0.01; // USER_HZ: 100 on Linux
/** The machine's CPU counters (the `cpu` line of /proc/stat), in ticks. */
function relayCpuSampler(pid) {
  const samples = [];
  const read = () => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const m = procStat();
      // user + nice + system + irq + softirq: not idle, iowait, steal (time
      // the hypervisor gave elsewhere), nor guest (already in user).
      const busy = m[0] + m[1] + m[2] + (m[5] ?? 0) + (m[6] ?? 0);
      samples.push([Date.now(), (Number(f[11]) + Number(f[12])) * TICK_S, busy * TICK_S]);
    } catch { /* not running: no sample */ }
  };
  read();
  const timer = setInterval(read, 50);
  timer.unref();
  const at = (t, k) => {
    // Linear between the two samples around t.
    const i = samples.findIndex(([ts]) => ts >= t);
    if (i < 0) return null;
    if (i === 0) return samples[0][0] === t ? samples[0][k] : null;
    const [t0] = samples[i - 1];
    const [t1] = samples[i];
    const c0 = samples[i - 1][k];
    const c1 = samples[i][k];
    return c0 + ((c1 - c0) * (t - t0)) / Math.max(1, t1 - t0);
  };
  const diff = (a, b, k) => {
    const x = at(a, k);
    const y = at(b, k);
    return x == null || y == null ? null : y - x;
  };
  return {
    /** CPU seconds the relay used between two Date.now() times, or null. */
    between(a, b) {
      read();
      return diff(a, b, 1);
    },
    /** CPU seconds everything on the machine but the relay used meanwhile, or null. */
    othersBetween(a, b) {
      read();
      const all = diff(a, b, 2);
      const relay = diff(a, b, 1);
      return all == null || relay == null ? null : all - relay;
    },
  };
}
let relayCpu = null;

// ── anchor: two AGT Python peers, the same bytes in 512 KiB messages ──────
async function agtOneWay(from, to, bytes, label) {
  const b64 = bytes.toString('base64');
  const n = Math.ceil(b64.length / CHUNK_B64);
  const t0 = performance.now();
  const e0 = Date.now();
  for (let i = 0; i < n; i++) from.send(to.did, { type: 'chunk', label, i, n, data: b64.slice(i * CHUNK_B64, (i + 1) * CHUNK_B64) });
  const parts = new Array(n);
  for (let k = 0; k < n; k++) {
    const ev = await to.next((e) => (e.event === 'message' && e.payload?.type === 'chunk' && e.payload.label === label) || e.event === 'error', STEP_TIMEOUT, `${label}: chunk ${k + 1}/${n}`);
    if (ev.event === 'error') throw new Error(`${label}: peer error ${JSON.stringify(ev).slice(0, 300)}`);
    parts[ev.payload.i] = ev.payload.data;
  }
  const ms = performance.now() - t0;
  const relayS = relayCpu?.between(e0, Date.now()) ?? null;
  const back = Buffer.from(parts.join(''), 'base64');
  if (!back.equals(bytes)) throw new Error(`${label}: the bytes that arrived differ`);
  return { ms, messages: n, relayS };
}

async function anchor(bytes) {
  const mk = (extra = {}) => spawnAgtPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, ...extra }).then((p) => {
    cleanup.push(() => p.close());
    return p;
  });
  const [p, q] = await Promise.all([mk(), mk()]);
  // Session set up (KNOCK) both ways before timing.
  p.send(q.did, { type: 'warmup' });
  await q.next((e) => e.event === 'message' && e.payload?.type === 'warmup', STEP_TIMEOUT, 'warmup p→q');
  q.send(p.did, { type: 'warmup' });
  await p.next((e) => e.event === 'message' && e.payload?.type === 'warmup', STEP_TIMEOUT, 'warmup q→p');
  const up = await agtOneWay(p, q, bytes, 'p→q');
  const down = await agtOneWay(q, p, bytes, 'q→p');
  const errors = [...p.events(), ...q.events()].filter((e) => e.event === 'error').length;
  await Promise.allSettled([p.close(), q.close()]);
  return {
    upMs: up.ms,
    downMs: down.ms,
    upMiBs: bytes.length / MiB / (up.ms / 1000),
    downMiBs: bytes.length / MiB / (down.ms / 1000),
    messages: up.messages,
    upRelayS: up.relayS,
    downRelayS: down.relayS,
    errors,
  };
}

// ── machine state ─────────────────────────────────────────────────────────
async function idleNote() {
  if (IDLE_S) return waitIdle(IDLE_S, { io: false });
  try { return `idle ${(100 * (await cpuIdleFraction(2000))).toFixed(0)}%`; } catch { return 'unknown (no /proc/stat)'; }
}

function markdown(env, rows, wallMs) {
  const ok = rows.filter((r) => !r.error);
  const med = (k, w) => median(ok.map((r) => r[w]?.[k]));
  const L = [];
  L.push('# kars-mesh offload throughput benchmark');
  L.push('');
  L.push(`Written by \`node bench/offload.mjs\` on ${env.date} (run took ${(wallMs / 1000).toFixed(1)} s).`);
  L.push('');
  L.push(`Engine build: ${env.build}.`);
  L.push('');
  L.push(`Machine: ${env.cpu}; ${env.os}; Node ${env.node}; ${env.python}; load average at start ${env.load}.${IDLE_S ? ' Each run waited for idle CPUs first (`--wait-idle`);' : ''} other work on the machine during a run still shows up in its figures.`);
  L.push('');
  L.push(`One loopback AgentMesh relay and registry (agent-governance-toolkit-core 5.0.0, \`tests/harness/servers.mjs\`) serve everything. The file is ${SIZE.toLocaleString('en-US')} bytes (${f2(SIZE / MiB)} MiB) of random data.`);
  L.push('');
  L.push('- **kars-mesh offload**: a client node and a controller node in the bench process, the sandbox in its own process');
  L.push('  (`js-host/sandbox-main.js`, started by the controller), its `--exec` copying the input to an output; durable state');
  L.push('  on both sides. *Upload*: from the client handling the sandbox\'s hello (the input starts going out) until the');
  L.push('  `--exec` starts (every input arrived, hash-checked, and the go-ahead came). *Download*: from the `--exec`\'s end');
  L.push('  until the client reports the output received (hash-checked, on disk). Both times come from one clock: engine');
  L.push('  event times, marker files the `--exec` writes, and this process.');
  L.push(`- **AGT Python anchor**: two \`tests/peers/agt_peer.py\` peers (AGT 5.0.0 reference crypto, in memory), the same bytes`);
  L.push(`  as ${Math.ceil(Math.ceil(SIZE / 3) * 4 / CHUNK_B64)} messages carrying 512 KiB of base64 each (how our transfer cuts a file), P → Q ("upload") then Q → P`);
  L.push('  ("download"), from writing the first send command until the receiver printed the last message; no receipts,');
  L.push('  nothing written to disk.');
  L.push('');
  L.push('| run | CPU before the run | kars-mesh upload MiB/s | kars-mesh download MiB/s | AGT Python P → Q MiB/s | AGT Python Q → P MiB/s | upload s | download s | AGT P → Q s | AGT Q → P s | submit → sandbox hello s | client stalled on the hello s | submit → done s | host thread event-loop delay p99 / max (ms) | longest engine call, client / controller (ms) | relay CPU % during upload / download | relay CPU % during AGT P → Q / Q → P |');
  L.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    if (r.error) {
      L.push(`| ${r.run} | ${r.idle ?? ''} | failed: ${r.error.replace(/\|/g, '\\|').split('\n')[0].slice(0, 400)} | | | | | | | | | | | | | | |`);
      continue;
    }
    const o = r.ours;
    const a = r.agt;
    L.push(`| ${r.run} | ${r.idle} | ${f1(o?.upMiBs)} | ${f1(o?.downMiBs)} | ${f1(a?.upMiBs)} | ${f1(a?.downMiBs)} | ${f2(o && o.upMs / 1000)} | ${f2(o && o.downMs / 1000)} | ${f2(a && a.upMs / 1000)} | ${f2(a && a.downMs / 1000)} | ${f2(o && o.setupMs / 1000)} | ${f2(o && o.helloStallMs / 1000)} | ${f2(o && o.totalMs / 1000)} | ${o ? `${f1(o.loopP99Ms)} / ${f1(o.loopMaxMs)}` : ''} | ${o ? o.maxCallMs.map(f1).join(' / ') : ''} | ${o ? `${pctOf(o.upRelayS, o.upMs)} / ${pctOf(o.downRelayS, o.downMs)}` : ''} | ${a ? `${pctOf(a.upRelayS, a.upMs)} / ${pctOf(a.downRelayS, a.downMs)}` : ''} |`);
  }
  if (ok.length > 1)
    L.push(`| median | | ${f1(med('upMiBs', 'ours'))} | ${f1(med('downMiBs', 'ours'))} | ${f1(med('upMiBs', 'agt'))} | ${f1(med('downMiBs', 'agt'))} | | | | | | | | | | | |`);
  L.push('');
  const up = med('upMiBs', 'ours');
  const down = med('downMiBs', 'ours');
  const aUp = med('upMiBs', 'agt');
  const aDown = med('downMiBs', 'agt');
  if (up != null && aUp != null)
    L.push(`kars-mesh / AGT Python: upload ${f2(up / aUp)}x, download ${f2(down / aDown)}x (medians of this run). Target (issue 12): 15 MiB/s or more each way on an idle machine.`);
  // The relay's CPU per MiB of file moved, over every direction of every run.
  const perMiB = (w, up, down) => {
    const xs = ok.flatMap((r) => [r[w]?.[up], r[w]?.[down]]).filter((x) => x != null);
    return xs.length ? median(xs) / (SIZE / MiB) : null;
  };
  const rOurs = perMiB('ours', 'upRelayS', 'downRelayS');
  const rAgt = perMiB('agt', 'upRelayS', 'downRelayS');
  const others = perMiB('ours', 'upOthersS', 'downOthersS');
  if (rOurs != null && rAgt != null) {
    const cores = os.cpus().length;
    const left = (cores - 15 * rOurs) / 15; // CPU s per MiB left for everything else at 15 MiB/s
    L.push('');
    L.push(`**Where the CPU goes.** The relay's own CPU per MiB of file moved (medians over both directions of every run): ${f1(rOurs * 1000)} ms for kars-mesh's frames, ${f1(rAgt * 1000)} ms for the anchor's. `
      + `With a whole core to itself the relay alone forwards at most ${f1(1 / rOurs)} MiB/s of our frames (${f1(1 / rAgt)} MiB/s of the anchor's). `
      + `At 15 MiB/s it would take ${f2(15 * rOurs)} of this machine's ${cores} cores, leaving ${f1(left * 1000)} ms of CPU per MiB for the client, the controller and the sandbox together; `
      + `during our transfers everything but the relay used ${others == null ? '—' : f1(others * 1000)} ms per MiB.`);
  }
  const errs = ok.map((r) => r.agt?.errors).filter((x) => x != null);
  if (errs.length) L.push('', `AGT peer error events: ${errs.join(', ')}.`);
  L.push('');
  L.push('*Client stalled on the hello*: how much later than the engine stamped it this process saw the sandbox\'s hello');
  L.push('event (the engine stamps it in its own thread; this process sees it when it reads the status), counted in the upload.');
  L.push('*Host thread event-loop delay*: `monitorEventLoopDelay` on this process\'s main thread (what a Gateway runs on)');
  L.push(`from the submit until done; the client's and the controller's engines run ${process.env.KARS_MESH_ENGINE_THREAD === 'main' ? 'on that thread too (`KARS_MESH_ENGINE_THREAD=main`)' : 'in worker threads'}.`);
  L.push('*Longest engine call*: the longest single `handle()` of each node since its start (`storeStats().maxCallMs`): what a tool call');
  L.push('or frame that came meanwhile waited behind.');
  return `${L.join('\n')}\n`;
}

async function main() {
  const wall0 = performance.now();
  let py = '?';
  try { py = execFileSync(VENV_PYTHON, ['--version'], { encoding: 'utf8' }).trim(); } catch { /* ignore */ }
  const cpus = os.cpus();
  const env = {
    build: buildId(),
    date: new Date().toISOString(),
    node: process.version,
    python: py,
    cpu: `${cpus[0]?.model ?? '?'} × ${cpus.length}`,
    os: `${os.type()} ${os.release()}`,
    load: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
  if (SIZE > MAX_FILE) throw new Error(`--size: an offload takes files of at most ${MAX_FILE} bytes`);
  console.log(`# ${env.cpu}; Node ${env.node}; ${py}; load ${env.load}; ${SIZE} bytes, ${RUNS} run(s)`);
  dir = mkdtempSync(path.join(os.tmpdir(), 'kars-bench-offload-'));
  sandboxDir = path.join(dir, 'sandboxes');
  srv = await startServers();
  takeOverSignals(stopEverything); // startServers() added handlers that exit at once
  console.log(`# relay ${srv.relayUrl}, registry ${srv.registryUrl}`);
  if (srv.relayPid?.()) relayCpu = relayCpuSampler(srv.relayPid());
  const bytes = randomBytes(SIZE);
  const input = path.join(dir, 'input.bin');
  writeFileSync(input, bytes);
  const inputSha = sha(bytes);
  const rows = [];
  for (let run = 1; run <= RUNS; run++) {
    const row = { run };
    rows.push(row);
    try {
      row.idle = await idleNote();
      console.log(`# run ${run}: kars-mesh offload ... (CPU ${row.idle})`);
      row.ours = await within(ours(run, input, inputSha), RUN_TIMEOUT + STEP_TIMEOUT, `run ${run}: offload`);
      console.log(`#   upload ${f1(row.ours.upMiBs)} MiB/s (${f2(row.ours.upMs / 1000)} s), download ${f1(row.ours.downMiBs)} MiB/s (${f2(row.ours.downMs / 1000)} s); submit → done ${f2(row.ours.totalMs / 1000)} s`);
      await stopAll();
      await within(killSandboxes(sandboxDir, { graceMs: 2000 }), 10_000, 'stopping the sandboxes').catch(() => {});
      console.log(`# run ${run}: AGT Python anchor ... (CPU ${await idleNote()})`);
      row.agt = await within(anchor(bytes), RUN_TIMEOUT, `run ${run}: AGT anchor`);
      console.log(`#   P → Q ${f1(row.agt.upMiBs)} MiB/s (${f2(row.agt.upMs / 1000)} s), Q → P ${f1(row.agt.downMiBs)} MiB/s (${f2(row.agt.downMs / 1000)} s), ${row.agt.messages} messages each way`);
    } catch (e) {
      console.log(`#   FAILED: ${e.message}`);
      row.error = e.message;
    }
    await stopAll();
    await within(killSandboxes(sandboxDir, { graceMs: 2000 }), 10_000, 'stopping the sandboxes').catch(() => {});
  }
  const endBuild = buildId();
  if (endBuild !== env.build) env.build = `CHANGED DURING THE RUN: at start ${env.build}; at the end ${endBuild}; rerun for consistent numbers`;
  const md = markdown(env, rows, performance.now() - wall0);
  console.log(`\n${md}`);
  if (!NO_WRITE) {
    writeFileSync(path.join(BENCH, 'OFFLOAD-RESULTS.md'), md);
    console.log('# wrote bench/OFFLOAD-RESULTS.md');
  }
  return rows.some((r) => r.error) ? 1 : 0;
}

let code = 1;
try {
  code = await main();
} catch (e) {
  console.log(`# FAILED: ${e.stack ?? e}`);
} finally {
  await stopEverything();
}
process.exit(code);
