#!/usr/bin/env node
// End-to-end mesh benchmark on ONE loopback relay (the real AgentMesh relay and
// registry, agent-governance-toolkit-core 5.0.0 from .venv), in one run:
//
//   round-trip latency  send -> peer decrypts -> peer's echo decrypted,
//                       ROUNDS sequential round trips after WARMUP, p50/p99
//   throughput          one pair, one direction: COUNT messages sent back to
//                       back; time from the first send until the receiver has
//                       decrypted all of them
//
// for (i) two kars-mesh clients, each in its own process
// (tests/drivers/mesh-node.mjs: our engine, durable state dir, the receiver
// reads with mesh_inbox wait_seconds) and (ii) two AGT Python reference peers
// (tests/peers/agt_peer.py, in memory, as it runs by default), plus (iii) the
// AGT peers with --state (they persist their state with an fsync per frame),
// since our client persists every step durably.
//
// All timings are taken in this process, from writing the command to the
// sender's stdin until the receiver's JSON line is read from its stdout, the
// same way for every implementation.
//
// Our pair runs twice: sends one at a time (each waits for the one before,
// as the AGT peer sends), and with 64 mesh_send calls in flight, whose
// stores the node commits together (group commit). Every message is durable
// before it leaves and before its receipt in both.
//
// Two more measurements explain our numbers, in this process with an
// instrumented pair (the node's group-commit totals: engine time, events,
// stores, commits): where a round trip's time goes, and what one mesh_send
// costs while N sent messages still wait for their receipt.
//
// Every pair gets SETTLE ms after its clients started before its first
// message (a user's first message comes seconds after the Gateway started,
// not in the same millisecond); in that second our engine's thread runs its
// warm-up (js-host/warm-up.js). --settle=0 sends at once, as before.
//
//   node bench/mesh.mjs [--rounds=200] [--count=2000] [--settle=1000] [--repeat=3] [--no-write] [--wait-idle[=s]]
//   --repeat     runs of every pair, taking turns; the table gives medians
//   --wait-idle  first wait (up to 300 s, or =s) until the CPUs are idle
// Writes bench/MESH-RESULTS.md (unless --no-write).
//
// Every wait is bounded (STEP_TIMEOUT per step, BURST_TIMEOUT per burst,
// SECTION_TIMEOUT per section): a section that does not finish fails with a
// message and the run goes on. SIGINT/SIGTERM stop the run: the client
// processes and the relay/registry are stopped, nothing is written, and the
// exit code is 130/143 (a second signal exits at once). A failed section
// makes the exit code 1 (its message is in the results file).
import { execFileSync } from 'node:child_process';
import fs, { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createNode } from '../js-host/node-host.js';
import { loadCore } from '../js-host/core.js';
import { startServers, VENV_PYTHON } from '../tests/harness/servers.mjs';
import { spawnAgtPeer } from '../tests/peers/agt_peer.mjs';
import { spawnMeshNode } from '../tests/drivers/mesh-node-client.mjs';
import { takeOverSignals, within, yieldToLoop } from './lifecycle.mjs';
import { agtBurst, oursBurst } from './throughput.mjs';
import { buildId, cpuIdleFraction, summary, waitIdle, waitIdleSeconds, wholeOption } from './machine.mjs';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt, min = 0) => wholeOption(args, name, dflt, 'bench/mesh.mjs', min);
const ROUNDS = opt('rounds', 200, 1);
const WARMUP = opt('warmup', 20);
const COUNT = opt('count', 2000, 1);
const REPEAT = opt('repeat', 3, 1);
const SETTLE = opt('settle', 1000);
const settle = () => new Promise((r) => setTimeout(r, SETTLE));
const NO_WRITE = args.includes('--no-write');
const IDLE_S = waitIdleSeconds(args, 'bench/mesh.mjs');
const STEP_TIMEOUT = 30_000;
const BURST_TIMEOUT = 300_000;
const SECTION_TIMEOUT = 900_000;

const f1 = (x) => (x == null ? '—' : x.toFixed(1));
const f2 = (x) => (x == null ? '—' : x.toFixed(2));

let srv;
let dir;
const cleanup = [];

// ── (i) kars-mesh clients ─────────────────────────────────────────────────
async function ours(window = 1) {
  // Each section's nodes, in each run, start from empty state directories of
  // their own (`round`): a pair that reused the previous one's would re-send, on connecting,
  // what was still waiting for a receipt when that section stopped it (seen:
  // `resent` 7 to 36 in the 64-in-flight section).
  // The readers consume, as an agent reads (`mesh_inbox` with mark_read,
  // the marks committed with the arrival), then print: as the AGT peer
  // persists, then prints. The tests' default reader peeks, prints, then
  // marks in a call of its own, which a SIGKILL test needs and which costs
  // a round trip one more commit (tests/drivers/mesh-node.mjs).
  const mk = (name, extra = {}) => spawnMeshNode({
    stateDir: path.join(dir, `r${round}-w${window}-${name}`), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: `bench-r${round}-w${window}-${name}`, label: name, consume: true, ...extra,
  }).then((n) => { cleanup.push(() => n.stop()); return n; });

  // Latency: A -> B (echo) -> A.
  const [a, b] = await Promise.all([mk('ours-a'), mk('ours-b', { echo: true })]);
  await settle();
  const echoOf = (k) => (e) => e.event === 'message' && e.payload?.type === 'echo' && e.payload.content?.k === k;
  const rtts = [];
  let setupMs;
  for (let k = 0; k < WARMUP + ROUNDS; k++) {
    const t0 = performance.now();
    const r = await within(a.request({ cmd: 'send', to: b.did, message: { type: 'ping', k } }), STEP_TIMEOUT, `ours: send ${k}`);
    if (!r.ok) throw new Error(`ours: send failed: ${r.error}`);
    await a.next(echoOf(k), STEP_TIMEOUT, `echo ${k}`);
    const ms = performance.now() - t0;
    if (k === 0) setupMs = ms;
    if (k >= WARMUP) rtts.push(ms);
  }
  const latency = summary(rtts);
  const latStats = (await within(b.request({ cmd: 'identity' }), STEP_TIMEOUT, 'ours: identity')).stats;

  // Throughput: C -> D, COUNT messages back to back.
  const [c, d] = await Promise.all([mk('ours-c'), mk('ours-d', { buffer: false })]);
  await settle();
  const t = await oursBurst(c, d, { count: COUNT, window, tag: 'ours', stepTimeout: STEP_TIMEOUT, burstTimeout: BURST_TIMEOUT });
  return {
    name: window > 1 ? `kars-mesh ↔ kars-mesh (${window} sends in flight)` : 'kars-mesh ↔ kars-mesh',
    setupMs,
    latency,
    latencyEngine: latStats,
    throughput: { count: t.count, totalMs: t.totalMs, perSec: t.perSec, sendMs: t.sendMs, sendPerSec: t.sendPerSec },
    engine: { sender: t.sender, receiver: t.receiver },
  };
}

// ── (ii)/(iii) AGT Python peers ───────────────────────────────────────────
async function agt(persist) {
  const tag = persist ? 'agt-state' : 'agt';
  const mk = (name, extra = {}) => spawnAgtPeer({
    relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, ...(persist ? { statePath: path.join(dir, `r${round}-${tag}-${name}.json`) } : {}), ...extra,
  }).then((p) => { cleanup.push(() => p.close()); return p; });

  const [p, q] = await Promise.all([mk('p'), mk('q', { echo: true })]);
  await settle();
  const rtts = [];
  let setupMs;
  for (let k = 0; k < WARMUP + ROUNDS; k++) {
    const t0 = performance.now();
    p.send(q.did, { type: 'ping', k });
    await p.next((e) => e.event === 'message' && e.from === q.did && e.payload?.type === 'echo' && e.payload.content?.k === k, STEP_TIMEOUT, `echo ${k}`);
    const ms = performance.now() - t0;
    if (k === 0) setupMs = ms;
    if (k >= WARMUP) rtts.push(ms);
  }
  const latency = summary(rtts);
  const errors = [...p.events(), ...q.events()].filter((e) => e.event === 'error').length;

  const [r, s] = await Promise.all([mk('r'), mk('s')]);
  await settle();
  const t = await agtBurst(r, s, { count: COUNT, tag, stepTimeout: STEP_TIMEOUT, burstTimeout: BURST_TIMEOUT });
  const errors2 = [...r.events(), ...s.events()].filter((e) => e.event === 'error').length;
  return {
    name: persist ? 'AGT Python ↔ AGT Python (--state: fsync per frame)' : 'AGT Python ↔ AGT Python (in memory)',
    setupMs,
    latency,
    throughput: t,
    errors: errors + errors2,
  };
}


// ── storage probe: the one place that knows how the host stores records ──
// The instrumented sections read the node's group-commit totals
// (node.storeStats(), kept by js-host/event-loop.js in the engine's thread):
// engine time, events handled, `store`/`erase` commands, bytes, commits (one
// WAL fsync each) and their time. diskBytes() sums every file under a state
// directory, whatever its layout. When the host's storage changes, adapt
// this function only.
function storageProbe() {
  // The engine and its database run in the node's worker thread; the node's
  // group-commit totals (node.storeStats(): engine time, events, stores,
  // bytes, commits, commit time) are what this section reports, as deltas
  // from reset(). One commit is one WAL fsync (synchronous = FULL).
  const tracked = [];
  const FIELDS = ['engineMs', 'events', 'stores', 'bytes', 'commits', 'commitMs'];
  const read = (node) => node.storeStats() ?? Object.fromEntries(FIELDS.map((k) => [k, 0]));
  const update = (t) => {
    const now = read(t.node);
    t.c.handleMs = now.engineMs - t.base.engineMs;
    t.c.handles = now.events - t.base.events;
    t.c.stores = now.stores - t.base.stores;
    t.c.storeBytes = now.bytes - t.base.bytes;
    t.c.commits = now.commits - t.base.commits;
    t.c.commitMs = now.commitMs - t.base.commitMs;
  };
  return {
    /** createNode options for an instrumented node (none: the totals are always kept). */
    nodeOptions: () => ({}),
    /** Count `node`'s work into `c` (read with `sample`). */
    track(node, c) {
      const t = { node, c, base: read(node) };
      tracked.push(t);
      update(t);
    },
    reset() {
      for (const t of tracked) {
        t.base = read(t.node);
        update(t);
      }
    },
    /** Refresh every tracked counter (as of each node's last batch). */
    sample() {
      for (const t of tracked) update(t);
    },
    diskBytes(stateDir) {
      let n = 0;
      for (const e of fs.readdirSync(stateDir, { recursive: true, withFileTypes: true }))
        if (e.isFile()) n += fs.statSync(path.join(e.parentPath ?? e.path, e.name)).size;
      return n;
    },
  };
}
let probe;

// ── where the time goes: an instrumented pair in this process ─────────────
const toolError = (r) => (typeof r?.content?.[0]?.text === 'string' && r.content[0].text.startsWith('❌') ? r.content[0].text : null);

async function instrumentedNode(name) {
  const p = {};
  const node = await createNode({
    stateDir: path.join(dir, name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {},
    ...probe.nodeOptions(p),
  });
  probe.track(node, p);
  cleanup.push(() => node.stop());
  const reg = await node.callTool('mesh_register', {}, { timeoutMs: STEP_TIMEOUT });
  if (!reg.details?.mesh?.registered) throw new Error(`${name}: register failed: ${toolError(reg) ?? JSON.stringify(reg)}`);
  return { node, p };
}

async function breakdown(section) {
  const [{ node: a, p: pa }, { node: b, p: pb }] = await Promise.all([instrumentedNode('prof-a'), instrumentedNode('prof-b')]);
  await settle();
  // mesh_inbox only peeks unless told to mark: both readers mark what they
  // take, or every call would return the same entries at once (and the echo
  // would answer them again, forever).
  const take = async (node, waitS, what) => {
    const r = await node.callTool('mesh_inbox', { wait_seconds: waitS, mark_read: true, limit: 500 }, { timeoutMs: (waitS + 10) * 1000 });
    const err = toolError(r);
    if (err) throw new Error(`${what}: mesh_inbox failed: ${err}`);
    return r.details.mesh.messages;
  };
  let echoError = null;
  const echo = (async () => {
    while (!section.over) {
      for (const m of await take(b, 2, 'echo side')) {
        const r = await b.callTool('mesh_send', { to: m.from, message: { type: 'echo', content: m.payload } }, { timeoutMs: STEP_TIMEOUT });
        if (toolError(r)) throw new Error(`echo side: mesh_send failed: ${toolError(r)}`);
      }
      await yieldToLoop();
    }
  })().catch((e) => { echoError = e; });
  const rt = async (k) => {
    const deadline = performance.now() + STEP_TIMEOUT;
    const r = await a.callTool('mesh_send', { to: b.did, message: { type: 'ping', k } }, { timeoutMs: STEP_TIMEOUT });
    if (toolError(r)) throw new Error(`ping ${k}: mesh_send failed: ${toolError(r)}`);
    for (;;) {
      if (section.over) throw new Error(`ping ${k}: section stopped`);
      if (echoError) throw new Error(`ping ${k}: the echo side stopped: ${echoError.message}`);
      const left = (deadline - performance.now()) / 1000;
      if (left <= 0) throw new Error(`echo of ping ${k} not back after ${STEP_TIMEOUT / 1000} s`);
      if ((await take(a, Math.min(2, Math.max(0.1, left)), `ping ${k}`)).some((m) => m.payload?.content?.k === k)) return;
      await yieldToLoop();
    }
  };
  try {
    for (let k = 0; k < WARMUP; k++) await rt(k);
    probe.reset();
    const R = Math.min(ROUNDS, 100);
    const rtts = [];
    for (let k = WARMUP; k < WARMUP + R; k++) {
      const t = performance.now();
      await rt(k);
      rtts.push(performance.now() - t);
    }
    const per = (x) => x / R;
    probe.sample();
    return {
      rounds: R,
      rtt: summary(rtts),
      handleMs: per(pa.handleMs + pb.handleMs),
      handles: per(pa.handles + pb.handles),
      stores: per(pa.stores + pb.stores),
      storeBytes: per(pa.storeBytes + pb.storeBytes),
      fsyncs: per(pa.commits + pb.commits),
      fsyncMs: per(pa.commitMs + pb.commitMs),
    };
  } finally {
    section.over = true;
    await within(Promise.allSettled([a.stop(), b.stop()]), STEP_TIMEOUT, 'stopping the instrumented pair').catch(() => {});
    await within(echo, STEP_TIMEOUT, 'the echo loop').catch(() => {});
  }
}

async function backlog(section) {
  // A peer that is registered but offline: nothing gets receipted.
  const { node: off } = await instrumentedNode('backlog-offline');
  const offDid = off.did;
  await off.stop();
  const { node: a, p } = await instrumentedNode('backlog-sender');
  const send = async (message) => {
    const r = await a.callTool('mesh_send', { to: offDid, message }, { timeoutMs: STEP_TIMEOUT });
    if (toolError(r)) throw new Error(`backlog: mesh_send failed: ${toolError(r)}`);
  };
  await send({ type: 'warmup' });
  const rows = [];
  for (let batch = 0; batch < 10; batch++) {
    probe.reset();
    const t = performance.now();
    for (let i = 0; i < 100; i++) {
      if (section.over) throw new Error('backlog: section stopped');
      await send({ type: 'bench', n: batch * 100 + i });
      await yieldToLoop();
    }
    probe.sample();
    rows.push({ outstanding: batch * 100 + 1, msPerSend: (performance.now() - t) / 100, handleMsPerSend: p.handleMs / 100, bytesPerSend: p.storeBytes / 100, recordBytes: probe.diskBytes(path.join(dir, 'backlog-sender')) });
  }
  await a.stop();
  return rows;
}

async function inboxGrowth(section) {
  // A reader that is away: every message stays unread in the receiver's
  // inbox (5,000 per sender is its quota). A receive cost that grows with
  // the inbox means some check walks every entry.
  const SEG = 800;
  const [{ node: a }, { node: b, p }] = await Promise.all([instrumentedNode('grow-sender'), instrumentedNode('grow-receiver')]);
  const send = async (message) => {
    const r = await a.callTool('mesh_send', { to: b.did, message }, { timeoutMs: STEP_TIMEOUT });
    if (toolError(r)) throw new Error(`inbox growth: mesh_send failed: ${toolError(r)}`);
  };
  const unread = async () => {
    const r = await b.callTool('mesh_inbox', { limit: 1, peek: true }, { timeoutMs: STEP_TIMEOUT });
    if (toolError(r)) throw new Error(`inbox growth: mesh_inbox failed: ${toolError(r)}`);
    return r.details.mesh.unread;
  };
  await send({ type: 'warmup' });
  const rows = [];
  let total = 1;
  for (let seg = 0; seg < 6; seg++) {
    probe.reset();
    const t = performance.now();
    const inFlight = new Set();
    for (let i = 0; i < SEG; i++) {
      if (section.over) throw new Error('inbox growth: section stopped');
      const q = send({ type: 'bench', n: seg * SEG + i }).finally(() => inFlight.delete(q));
      inFlight.add(q);
      if (inFlight.size >= 16) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    const deadline = performance.now() + STEP_TIMEOUT;
    while ((await unread()) < total + SEG) {
      if (section.over || performance.now() > deadline) throw new Error(`inbox growth: ${total + SEG} messages not all in the inbox after ${STEP_TIMEOUT / 1000} s`);
      await new Promise((res) => setTimeout(res, 20));
    }
    probe.sample();
    rows.push({ unreadBefore: total, count: SEG, msPerMsg: (performance.now() - t) / SEG, handleMsPerMsg: p.handleMs / SEG, bytesPerMsg: p.storeBytes / SEG });
    total += SEG;
  }
  await Promise.allSettled([a.stop(), b.stop()]);
  return rows;
}

/** One run of one pair: its results (or its failure) go to `into`. */
/**
 * Which run of its pair a section is: its clients' state (ours and the AGT
 * peer's --state file) and names are the run's own, so every run's first
 * message is a first contact (KNOCK, X3DH) and nothing waits from a run
 * before (reused, the later runs timed a message on an existing session as
 * "first contact" and re-sent what the run before left unreceipted).
 */
let round = 0;

async function runPair(name, fn, rep, into) {
  round = rep;
  const idleAt = await beforeSection(REPEAT > 1 ? `${name}, run ${rep + 1} of ${REPEAT}` : name);
  const t = performance.now();
  try {
    const r = await runSection(fn);
    r.idleAt = idleAt;
    into.push(r);
    console.log(`#   RTT p50 ${f2(r.latency.p50)} ms, p99 ${f2(r.latency.p99)} ms (first contact ${f1(r.setupMs)} ms); `
      + `${COUNT} msgs delivered in ${(r.throughput.totalMs / 1000).toFixed(2)} s = ${Math.round(r.throughput.perSec)} msg/s `
      + `(send side ${Math.round(r.throughput.sendPerSec)} msg/s) [${((performance.now() - t) / 1000).toFixed(1)} s]`);
    if (r.engine) console.log(`#   engine sender ${JSON.stringify(r.engine.sender)}\n#   engine receiver ${JSON.stringify(r.engine.receiver)}`);
  } catch (e) {
    console.log(`#   FAILED: ${e.message}`);
    into.push({ name, error: e.message });
    failures++;
  }
  await stopAll();
}

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** One pair's runs as one row: each figure the median of its runs. */
function combineRuns(name, rs) {
  const bad = rs.find((r) => r.error);
  if (bad) return { name, error: rs.length > 1 ? `run ${rs.indexOf(bad) + 1} of ${rs.length}: ${bad.error}` : bad.error };
  const med = (f) => median(rs.map(f));
  const last = rs[rs.length - 1];
  return {
    name,
    runs: rs.length,
    setupMs: med((r) => r.setupMs),
    latency: { p50: med((r) => r.latency.p50), p99: med((r) => r.latency.p99), mean: med((r) => r.latency.mean), max: med((r) => r.latency.max) },
    throughput: { count: COUNT, totalMs: med((r) => r.throughput.totalMs), perSec: med((r) => r.throughput.perSec), sendPerSec: med((r) => r.throughput.sendPerSec) },
    engine: last.engine,
    errors: rs.some((r) => r.errors !== undefined) ? rs.reduce((n, r) => n + (r.errors ?? 0), 0) : undefined,
    idleAt: rs.map((r) => r.idleAt).filter(Boolean).join('; '),
  };
}

/** Run one section with SECTION_TIMEOUT; `section.over` tells its loops to stop. */
async function runSection(fn) {
  const section = { over: false };
  try {
    return await within(fn(section), SECTION_TIMEOUT, 'section');
  } finally {
    section.over = true;
  }
}

function environment() {
  let py = '?';
  try { py = execFileSync(VENV_PYTHON, ['--version'], { encoding: 'utf8' }).trim(); } catch { /* ignore */ }
  const build = buildId();
  const cpus = os.cpus();
  return {
    build,
    date: new Date().toISOString(),
    node: process.version,
    python: py,
    cpu: `${cpus[0]?.model ?? '?'} × ${cpus.length}`,
    os: `${os.type()} ${os.release()}`,
    load: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}

function markdown(env, results, bd, bl, ig, wallMs) {
  const L = [];
  L.push('# kars-mesh end-to-end mesh benchmark');
  L.push('');
  L.push(`Written by \`node bench/mesh.mjs\` on ${env.date} (run took ${(wallMs / 1000).toFixed(1)} s).`);
  L.push('');
  L.push(`Engine build: ${env.build}.`);
  L.push('');
  L.push(`Machine: ${env.cpu}; ${env.os}; Node ${env.node}; ${env.python}; load average at start ${env.load}. With \`--wait-idle\` each section waits for idle CPUs first; other work starting during a section (builds, tests) still shows up, mostly in p99/max and in fsync times.`);
  L.push('');
  L.push('One loopback AgentMesh relay and registry (agent-governance-toolkit-core 5.0.0, `tests/harness/servers.mjs`)');
  L.push('serve every pair in this run. Each client is its own process: ours is `tests/drivers/mesh-node.mjs`');
  L.push('(js-host/node-host.js + the wasm engine in a worker, state in SQLite with group commit: one fsync per batch of events, the receiver');
  L.push('reads with `mesh_inbox wait_seconds` and `mark_read`, as an agent reads: the read marks commit with the arrival, then the');
  L.push('message is printed); the AGT peer is `tests/peers/agt_peer.py` (AGT 5.0.0 reference');
  L.push('crypto, websockets). Timings are taken in the bench process from writing the command to the sender\'s stdin');
  L.push('until the receiver\'s JSON line is read, identically for both.');
  L.push('');
  L.push(`- **Start**: every pair's first message goes ${SETTLE} ms after its two clients were up (\`--settle\`; a user's first message comes`);
  L.push('  seconds after the Gateway started). In that time our engine\'s thread runs its warm-up (js-host/warm-up.js), which steps aside');
  L.push('  while the node has traffic of its own.');
  L.push(`- **Round trip**: A sends, B decrypts and echoes (\`{type:"echo", content}\`), A decrypts the echo. ${WARMUP} warm-up`);
  L.push(`  round trips (the first one includes the KNOCK / X3DH setup) are excluded, then ${ROUNDS} sequential ones.`);
  L.push(`- **Throughput**: a fresh pair, session set up by one warm-up message, then ${COUNT} messages C → D back to`);
  L.push('  back; *delivered/s* = messages / (time from the first send until D has decrypted the last one).');
  L.push('  *send/s* is how fast the sender accepted them.');
  L.push('');
  if (REPEAT > 1) {
    L.push(`- **Runs**: every pair runs ${REPEAT} times, the pairs taking turns (every other round in reverse order), so a slow`);
    L.push('  minute of this shared machine falls on all of them alike. Each figure below is the median of its pair\'s runs;');
    L.push('  the next table gives every run, with our figures over the fsync pair\'s from the same round.');
  }
  L.push('');
  L.push('| pair | first contact RTT (ms) | RTT p50 (ms) | RTT p99 (ms) | RTT mean (ms) | RTT max (ms) | delivered/s | send/s | all delivered after (s) | CPU before the section |');
  L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const r of results) {
    if (r.error) {
      L.push(`| ${r.name} | failed: ${r.error.replace(/\|/g, '\\|').split('\n')[0]} | | | | | | | | |`);
      continue;
    }
    L.push(`| ${r.name} | ${f1(r.setupMs)} | ${f2(r.latency.p50)} | ${f2(r.latency.p99)} | ${f2(r.latency.mean)} | ${f1(r.latency.max)} | ${Math.round(r.throughput.perSec)} | ${Math.round(r.throughput.sendPerSec)} | ${(r.throughput.totalMs / 1000).toFixed(2)} | ${r.idleAt ?? ''} |`);
  }
  L.push('');
  const per = perRun.filter((p) => p.runs.length && !p.runs.some((r) => r.error));
  const fsyncRuns = per.find((p) => p.name.includes('fsync'))?.runs;
  if (REPEAT > 1 && per.length) {
    const short = (n) => n.replace('kars-mesh ↔ kars-mesh', 'ours').replace('AGT Python ↔ AGT Python', 'AGT').replace(' (--state: fsync per frame)', ' fsync').replace(' (in memory)', ' in memory').replace(' (64 sends in flight)', ', 64 in flight');
    const ourRuns = per.filter((p) => p.name.startsWith('kars-mesh'));
    const head = ['run', ...per.flatMap((p) => [`${short(p.name)} p50`, 'p99', 'msgs/s'])];
    if (fsyncRuns) head.push(...ourRuns.flatMap((p) => [`${short(p.name)} ÷ AGT fsync: p50`, 'p99', 'msgs/s']));
    L.push('Every run (RTT in ms):');
    L.push('');
    L.push(`| ${head.join(' | ')} |`);
    L.push(`|${head.map((_, i) => (i ? '---:' : '---')).join('|')}|`);
    for (let k = 0; k < REPEAT; k++) {
      const row = [String(k + 1)];
      for (const p of per) {
        const r = p.runs[k];
        row.push(r ? f2(r.latency.p50) : '', r ? f2(r.latency.p99) : '', r ? String(Math.round(r.throughput.perSec)) : '');
      }
      if (fsyncRuns) {
        const base = fsyncRuns[k];
        for (const p of ourRuns) {
          const r = p.runs[k];
          row.push(r && base ? f2(r.latency.p50 / base.latency.p50) : '', r && base ? f2(r.latency.p99 / base.latency.p99) : '', r && base ? f2(r.throughput.perSec / base.throughput.perSec) : '');
        }
      }
      L.push(`| ${row.join(' | ')} |`);
    }
    L.push('');
  }
  const o = results.find((r) => r.engine);
  if (o) {
    L.push('Engine counters of our throughput pair after the run (`mesh_identity` stats):');
    L.push('');
    L.push(`- sender: \`${JSON.stringify(o.engine.sender)}\``);
    L.push(`- receiver: \`${JSON.stringify(o.engine.receiver)}\``);
    L.push('');
    L.push('`resent` > 0 on the sender means messages went out again: after 20 s without their receipt, or at once when the receiver receipted a later one (held behind a gap);');
    L.push('`undecryptable`/`duplicates` on the receiver count those extra copies.');
    L.push('');
  }
  const a = results.filter((r) => r.errors !== undefined);
  if (a.length) {
    L.push(`AGT peer error events during the run: ${a.map((r) => `${r.name}: ${r.errors}`).join('; ')}.`);
    L.push('');
  }
  if (bd?.error) L.push('## Where a kars-mesh round trip goes', '', `Failed: ${bd.error}`, '');
  if (bl?.error) L.push('## mesh_send cost while messages wait for their receipt', '', `Failed: ${bl.error}`, '');
  if (bd && !bd.error) {
    L.push('## Where a kars-mesh round trip goes');
    L.push('');
    L.push(`Two nodes in the bench process (no driver, no pipes), ${bd.rounds} round trips as above (each side reads with \`mesh_inbox\` \`mark_read\`, as the driver does), the core's \`handle()\``);
    L.push('the node\'s group-commit totals: engine time, events handled, `store`/`erase` commands, commits (one WAL fsync each) and their time.');
    L.push(`Per round trip, both nodes together (CPU before the section: ${bd.idleAt}):`);
    L.push('');
    L.push('| RTT p50 (ms) | RTT p99 (ms) | engine handle() calls | engine CPU (ms) | stores and erases | bytes stored | commits (fsyncs) | commit time (ms) |');
    L.push('|---:|---:|---:|---:|---:|---:|---:|---:|');
    L.push(`| ${f2(bd.rtt.p50)} | ${f2(bd.rtt.p99)} | ${f1(bd.handles)} | ${f2(bd.handleMs)} | ${f1(bd.stores)} | ${Math.round(bd.storeBytes)} | ${f1(bd.fsyncs)} | ${f2(bd.fsyncMs)} |`);
    L.push('');
  }
  if (bl && !bl.error) {
    L.push('## mesh_send cost while messages wait for their receipt');
    L.push('');
    L.push('One node sends 1,000 messages to a registered peer that is offline, so none is receipted and all stay in');
    L.push(`its outbox. A cost that grows with the backlog means some record is rewritten whole per send. Per batch of 100 sends (CPU before the section: ${bl.idleAt}):`);
    L.push('');
    L.push('| unreceipted before the batch | ms per mesh_send | engine CPU ms per send | bytes stored per send | state directory on disk after (bytes) |');
    L.push('|---:|---:|---:|---:|---:|');
    for (const r of bl) L.push(`| ${r.outstanding}–${r.outstanding + 99} | ${f2(r.msPerSend)} | ${f2(r.handleMsPerSend)} | ${Math.round(r.bytesPerSend)} | ${r.recordBytes} |`);
    L.push('');
  }
  if (ig?.error) L.push('## Receiving while the inbox fills', '', `Failed: ${ig.error}`, '');
  if (ig && !ig.error) {
    L.push('## Receiving while the inbox fills');
    L.push('');
    L.push('One node sends 4,800 messages (16 sends in flight) to a peer whose reader is away, so every message stays');
    L.push('unread in its inbox (the quota is 5,000 unread per sender). A receive cost that grows with the inbox means');
    L.push(`some check walks every entry. Receiver's totals per message, per batch of ${ig[0].count} (CPU before the section: ${ig.idleAt}):`);
    L.push('');
    L.push('| unread before the batch | ms per message, all delivered | receiver engine CPU ms per message | bytes stored per message |');
    L.push('|---:|---:|---:|---:|');
    for (const r of ig) L.push(`| ${r.unreadBefore}–${r.unreadBefore + r.count - 1} | ${f2(r.msPerMsg)} | ${f2(r.handleMsPerMsg)} | ${Math.round(r.bytesPerMsg)} |`);
    L.push('');
  }
  return `${L.join('\n')}\n`;
}

/** Before each section: wait for idle CPUs (with --wait-idle), note the idle share. */
async function beforeSection(name) {
  let note;
  if (IDLE_S) {
    note = await waitIdle(IDLE_S);
  } else {
    try { note = `idle ${(100 * (await cpuIdleFraction(1000))).toFixed(0)}%`; } catch { note = '?'; }
  }
  console.log(`# ${name} ... (CPU ${note})`);
  return note;
}

async function main() {
  const wall0 = performance.now();
  let idleNote = 'not waited for';
  if (IDLE_S) {
    console.log(`# waiting (up to ${IDLE_S} s) for idle CPUs ...`);
    idleNote = await waitIdle(IDLE_S);
    console.log(`# ${idleNote}`);
  }
  const env = environment();
  env.idle = idleNote;
  try { env.idleNow = `${(100 * (await cpuIdleFraction(1000))).toFixed(0)}%`; } catch { env.idleNow = '?'; }
  console.log(`# ${env.cpu}; Node ${env.node}; ${env.python}; load ${env.load}; CPU idle ${env.idleNow}`);
  dir = mkdtempSync(path.join(os.tmpdir(), 'kars-bench-mesh-'));
  srv = await startServers();
  takeOverSignals(stopEverything); // startServers() added handlers that exit at once
  console.log(`# relay ${srv.relayUrl}, registry ${srv.registryUrl}`);
  const PAIRS = [
    ['kars-mesh ↔ kars-mesh', () => ours(1)],
    ['kars-mesh ↔ kars-mesh (64 sends in flight)', () => ours(64)],
    ['AGT Python ↔ AGT Python (in memory)', () => agt(false)],
    ['AGT Python ↔ AGT Python (--state: fsync per frame)', () => agt(true)],
  ];
  // Every pair runs REPEAT times, the pairs taking turns (every other
  // round in reverse order), so a slow minute of this shared machine falls
  // on all of them alike; the table gives each pair's medians.
  const runs = new Map(PAIRS.map(([name]) => [name, []]));
  for (let rep = 0; rep < REPEAT; rep++) {
    for (const [name, fn] of rep % 2 ? [...PAIRS].reverse() : PAIRS) {
      await runPair(name, fn, rep, runs.get(name));
    }
  }
  const results = PAIRS.map(([name]) => combineRuns(name, runs.get(name)));
  perRun = PAIRS.map(([name]) => ({ name, runs: runs.get(name) }));
  await stopAll();
  probe = storageProbe();
  let bd = null;
  let bl = null;
  let ig = null;
  for (const [name, fn, keep] of [
    ['where the time goes (instrumented pair in this process)', breakdown, (r) => (bd = r)],
    ['mesh_send cost vs. unreceipted backlog', backlog, (r) => (bl = r)],
    ['receive cost vs. unread inbox', inboxGrowth, (r) => (ig = r)],
  ]) {
    const idleAt = await beforeSection(name);
    try {
      const r = await runSection(fn);
      r.idleAt = idleAt;
      keep(r);
      for (const x of Array.isArray(r) ? r : [r]) console.log(`#   ${JSON.stringify(x)}`);
    } catch (e) {
      console.log(`#   FAILED: ${e.message}`);
      keep({ error: e.message, idleAt });
      failures++;
    }
    await stopAll();
  }
  const endBuild = buildId();
  if (endBuild !== env.build) {
    env.build = `CHANGED DURING THE RUN (js-host/gen was rebuilt): at start ${env.build}; at the end ${endBuild}. Sections started after the rebuild ran the new engine; rerun for consistent numbers`;
    console.log(`# WARNING: the engine build changed during the run: ${env.build}`);
  }
  const md = markdown(env, results, bd, bl, ig, performance.now() - wall0);
  console.log(`\n${md}`);
  if (!NO_WRITE) {
    writeFileSync(path.join(BENCH, 'MESH-RESULTS.md'), md);
    console.log('# wrote bench/MESH-RESULTS.md');
  }
}

let failures = 0;
/** Each pair's runs, for the per-run table. */
let perRun = [];
/** Stop every client of this run (each stop bounded). */
const stopAll = () => within(Promise.allSettled(cleanup.splice(0).map((f) => f())), 15_000, 'stopping the clients').catch(() => {});

// SIGINT/SIGTERM: stop the clients and the relay/registry, remove the state
// directory, write nothing, exit 128 + signal number.
const stopEverything = async () => {
  await stopAll();
  await within(srv?.stop() ?? Promise.resolve(), 5000, 'stopping the relay/registry').catch(() => {});
  try { if (dir) rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
};
takeOverSignals(stopEverything);

try {
  await main();
} finally {
  await stopAll();
  await srv?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}
process.exit(failures ? 1 : 0);
