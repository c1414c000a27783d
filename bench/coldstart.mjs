#!/usr/bin/env node
// Cold-start benchmark (issue 12): how long the plugin takes to come up on a
// large state directory (load the component, open the store, restore 1,000
// sessions and 10,000 inbox entries), and what an idle session costs in
// memory. A benchmark: it reports, it asserts no timing.
//
//   bash scripts/node.sh bench/coldstart.mjs [--sessions=1000] [--inbox=10000]
//        [--senders=N] [--runs=5] [--no-write] [--keep]
//   npm run bench:coldstart
//
// 1. Build the state with the real loopback relay and registry
//    (tests/harness/servers.mjs) and real peers: node A (the node under test)
//    starts on an empty directory; SESSIONS identities register with prekeys
//    through the component's toolkit (tests/peers/raw_peer.mjs, 16 at a time,
//    each closed once registered); A sends one message to each (32 mesh_send
//    in flight), so it holds one session per peer. Then SENDERS other kars
//    nodes send INBOX messages to A (64 in flight each) until A's mesh_inbox
//    reports total >= INBOX. A node keeps at most 5,000 unread messages per
//    sender and only 1,000 read ones (src/agent/inbox.rs), so the entries stay
//    unread and come from ceil(INBOX / 5,000) senders. A is stopped and its
//    directory copied at three points: "identity" (started and registered,
//    nothing else), "sessions" (SESSIONS sessions, empty inbox) and "full".
// 2. Cold start, RUNS times per state, each in a fresh Node process (a fresh
//    copy of the state; the OS page cache is warm): createNode until it
//    resolves, the first mesh_inbox {limit:10}, the core's linear memory
//    (node.memoryBytes()), process RSS and the main thread's V8 heap, then
//    again once the node is connected and registered and has been idle 1 s.
//    "empty" is a new empty directory each run (a first start: identity and
//    prekeys are generated).
// 3. bench/COLDSTART-RESULTS.md (unless --no-write), printed as well.
//
// Every wait is bounded and fails with a message; SIGINT/SIGTERM stop the
// nodes, the probe process and the servers and remove the temp directories
// (--keep leaves them and prints where).
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH, '..');
const SELF = fileURLToPath(import.meta.url);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;

/** `p`, or a rejection naming `what` after `ms`. */
function within(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`${what}: no answer within ${Math.round(ms / 1000)} s`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

function memNow() {
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers };
}

// ---------------------------------------------------------------------------
// The probe: one cold start in this (fresh) process, one JSON line on stdout.
// ---------------------------------------------------------------------------
async function probeMain() {
  const cfg = JSON.parse(process.env.KARS_COLDSTART_PROBE);
  const hard = setTimeout(() => {
    console.error(`probe: no result within ${cfg.timeoutMs / 1000} s`);
    process.exit(2);
  }, cfg.timeoutMs);
  let node = null;
  const onSignal = (sig) => {
    const exit = () => process.exit(sig === 'SIGINT' ? 130 : 143);
    if (!node) return exit();
    within(node.stop(), 5000, 'probe stop').then(exit, exit);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const gc = globalThis.gc ?? (() => {});
  const warnings = [];
  const log = (level, message) => {
    if ((level === 'warn' || level === 'error') && warnings.length < 5) warnings.push(`${level}: ${message}`.slice(0, 300));
  };

  gc();
  const bare = memNow();
  let t = performance.now();
  const { createNode } = await import('../js-host/node-host.js');
  const importMs = performance.now() - t;

  t = performance.now();
  node = await within(createNode({ stateDir: cfg.stateDir, relayUrl: cfg.relayUrl, registryUrl: cfg.registryUrl, log }), 120_000, 'createNode');
  const createMs = performance.now() - t;
  const atCreate = { core: node.memoryBytes(), ...memNow() };
  const startStats = node.storeStats();

  t = performance.now();
  const inbox = await node.callTool('mesh_inbox', { limit: 10 }, { timeoutMs: 60_000 });
  const firstInboxMs = performance.now() - t;
  const im = inbox?.details?.mesh ?? {};
  if (im.error) throw new Error(`mesh_inbox failed: ${inbox.content?.[0]?.text}`);
  const atInbox = { core: node.memoryBytes(), ...memNow() };

  // Connected and registered (bounded), then idle for a second.
  t = performance.now();
  let status = {};
  const until = Date.now() + 30_000;
  for (;;) {
    status = (await node.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh;
    if (status.registered && status.connected) break;
    if (Date.now() > until) throw new Error(`not connected and registered 30 s after start (relay_problem: ${JSON.stringify(status.relay_problem)})`);
    await sleep(50);
  }
  const onlineMs = performance.now() - t + createMs + firstInboxMs;
  await sleep(1000);
  status = (await node.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh;
  gc();
  const idle = { core: node.memoryBytes(), ...memNow() };

  t = performance.now();
  await within(node.stop(), 30_000, 'node.stop');
  const stopMs = performance.now() - t;
  node = null;
  clearTimeout(hard);
  process.stdout.write(`${JSON.stringify({
    importMs, createMs, firstInboxMs, onlineMs, stopMs,
    startEngineMs: startStats?.engineMs, startCommitMs: startStats?.commitMs,
    inboxReturned: im.returned, inboxTotal: im.total, inboxUnread: im.unread,
    sessions: status.sessions, unread: status.unread, outbox: status.outbox,
    bare, atCreate, atInbox, idle, warnings,
  })}\n`);
}

// ---------------------------------------------------------------------------
// The benchmark.
// ---------------------------------------------------------------------------
async function main() {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const a = args.find((x) => x.startsWith(`--${name}=`));
    if (!a) return dflt;
    const v = Number(a.slice(name.length + 3));
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`--${name} takes a whole number`);
    return v;
  };
  const SESSIONS = opt('sessions', 1000);
  const INBOX = opt('inbox', 10_000);
  const PER_SENDER = 5000; // MAX_UNREAD_PER_SENDER, src/agent/inbox.rs
  const SENDERS = Math.max(1, opt('senders', Math.ceil(INBOX / PER_SENDER)));
  const RUNS = Math.max(1, opt('runs', 5));
  const NO_WRITE = args.includes('--no-write');
  const KEEP = args.includes('--keep');
  if (Math.ceil(INBOX / SENDERS) > PER_SENDER) throw new Error(`--senders=${SENDERS}: each would send more than the ${PER_SENDER} unread a node keeps per sender`);

  const { createNode } = await import('../js-host/node-host.js');
  const { startServers } = await import('../tests/harness/servers.mjs');
  const { rawPeer } = await import('../tests/peers/raw_peer.mjs');
  const { recordKeys } = await import('../tests/harness/state-db.mjs');

  const startedAt = new Date();
  const tRun = performance.now();
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-coldstart-'));
  const liveNodes = new Set();
  const livePeers = new Set();
  const liveChildren = new Set();
  let srv = null;
  let cleaning = null;

  async function cleanup() {
    cleaning ??= (async () => {
      for (const c of liveChildren) {
        try { c.kill('SIGTERM'); } catch { /* gone */ }
      }
      await Promise.allSettled([...livePeers].map((p) => within(p.close(), 3000, 'peer close')));
      await Promise.allSettled([...liveNodes].map((n) => within(n.stop(), 10_000, 'node stop')));
      for (const c of liveChildren) {
        try { c.kill('SIGKILL'); } catch { /* gone */ }
      }
      if (srv) await within(srv.stop(), 10_000, 'servers stop').catch(() => {});
      if (KEEP) console.error(`kept ${base}`);
      else fs.rmSync(base, { recursive: true, force: true });
    })();
    return cleaning;
  }
  let signalled = false;
  function onSignal(sig) {
    if (signalled) process.exit(sig === 'SIGINT' ? 130 : 143); // a second one: now
    signalled = true;
    console.error(`\n${sig}: stopping nodes and servers, removing ${base}`);
    within(cleanup(), 20_000, 'cleanup').catch((e) => console.error(e.message)).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  }
  const installSignals = () => {
    // servers.mjs installs handlers that SIGKILL the servers and exit at once;
    // ours stop everything in order (its exit hook still kills the servers).
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.removeAllListeners(sig);
      process.on(sig, onSignal);
    }
  };
  installSignals();

  const say = (s) => console.error(`[${((performance.now() - tRun) / 1000).toFixed(1)} s] ${s}`);
  const build = {};
  const warnLog = [];
  const nodeLog = (who) => (level, message) => {
    if ((level === 'warn' || level === 'error') && warnLog.length < 10) warnLog.push(`${who} ${level}: ${String(message).slice(0, 300)}`);
  };
  async function startNode(dir, name) {
    const n = await within(createNode({ stateDir: dir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: nodeLog(name) }), 120_000, `createNode ${name}`);
    liveNodes.add(n);
    const until = Date.now() + 30_000;
    for (;;) {
      const m = (await n.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh;
      if (m.registered && m.connected) return n;
      if (Date.now() > until) throw new Error(`${name} not registered and connected after 30 s (relay_problem: ${JSON.stringify(m.relay_problem)})`);
      await sleep(100);
    }
  }
  async function stopNode(n) {
    await within(n.stop(), 30_000, 'node.stop');
    liveNodes.delete(n);
  }
  /** Run fn over items, `width` at a time; failures collected, not thrown. */
  async function pool(items, width, fn) {
    const failures = [];
    let next = 0;
    async function lane() {
      while (next < items.length) {
        const i = next++;
        try {
          await fn(items[i], i);
        } catch (e) {
          failures.push(String(e?.message ?? e));
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane));
    return failures;
  }
  const snapshot = (from, name) => {
    const to = path.join(base, `snap-${name}`);
    fs.cpSync(from, to, { recursive: true });
    return to;
  };
  const timed = async (key, f) => {
    const t = performance.now();
    const r = await f();
    build[key] = (performance.now() - t) / 1000;
    return r;
  };

  try {
    // ---- 1. the state ------------------------------------------------------
    srv = await timed('serversS', () => startServers());
    installSignals();
    say(`relay ${srv.relayUrl}, registry ${srv.registryUrl}`);
    const dirA = path.join(base, 'a');
    const snaps = {};
    let a = await timed('firstStartS', () => startNode(dirA, 'coldstart-a'));
    const didA = a.did;
    await stopNode(a);
    snaps.identity = snapshot(dirA, 'identity');

    const dids = [];
    const regFailures = await timed('registerS', () => pool(Array.from({ length: SESSIONS }, (_, i) => i), 16, async () => {
      let lastErr;
      for (let attempt = 0; attempt < 3; attempt++) {
        let p;
        try {
          p = await within(rawPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, register: true, graceMs: 20 }), 30_000, 'raw peer registration');
          livePeers.add(p);
          dids.push(p.did);
          await within(p.close(), 5000, 'raw peer close');
          livePeers.delete(p);
          return;
        } catch (e) {
          lastErr = e;
          if (p) livePeers.delete(p);
          await sleep(500 * (attempt + 1));
        }
      }
      throw lastErr;
    }));
    build.registered = dids.length;
    build.registerFailures = regFailures.slice(0, 3);
    say(`${dids.length} peers registered in ${build.registerS.toFixed(1)} s${regFailures.length ? ` (${regFailures.length} failed: ${regFailures[0]})` : ''}`);

    a = await startNode(dirA, 'coldstart-a');
    const sendOutcome = { ok: 0, queued: 0, failed: 0, firstFailure: null };
    const sendFailures = await timed('sessionsS', () => pool(dids, 32, async (to, i) => {
      const r = await a.callTool('mesh_send', { to, message: `cold-start bench: hello ${i}` }, { timeoutMs: 60_000 });
      const m = r?.details?.mesh ?? {};
      if (m.error) {
        sendOutcome.failed++;
        sendOutcome.firstFailure ??= r.content?.[0]?.text;
      } else if (m.queued) sendOutcome.queued++;
      else sendOutcome.ok++;
    }));
    if (sendFailures.length) {
      sendOutcome.failed += sendFailures.length;
      sendOutcome.firstFailure ??= sendFailures[0];
    }
    let st = (await a.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh;
    build.sends = sendOutcome;
    build.sessionsHeld = st.sessions;
    say(`${SESSIONS} mesh_send in ${build.sessionsS.toFixed(1)} s: ${JSON.stringify(sendOutcome)}; A holds ${st.sessions} sessions, outbox ${st.outbox}`);
    await stopNode(a);
    build.sessionRecords = recordKeys(dirA, 'session/').length;
    snaps.sessions = snapshot(dirA, 'sessions');

    // The inbox: SENDERS kars nodes, INBOX messages in all, A running.
    a = await startNode(dirA, 'coldstart-a');
    const senders = [];
    for (let k = 0; k < SENDERS; k++) senders.push(await startNode(path.join(base, `sender-${k}`), `coldstart-sender-${k}`));
    const perSender = Array.from({ length: SENDERS }, (_, k) => Math.floor(INBOX / SENDERS) + (k < INBOX % SENDERS ? 1 : 0));
    const pad = 'x'.repeat(60);
    const inboxOutcome = { ok: 0, queued: 0, failed: 0, firstFailure: null };
    let total = 0;
    let diag = {};
    const t0 = performance.now();
    const sending = Promise.all(senders.map((s, k) => pool(Array.from({ length: perSender[k] }, (_, i) => i), 64, async (i) => {
      const r = await s.callTool('mesh_send', { to: didA, message: `cold-start bench: sender ${k} message ${i} ${pad}` }, { timeoutMs: 120_000 });
      const m = r?.details?.mesh ?? {};
      if (m.error) {
        inboxOutcome.failed++;
        inboxOutcome.firstFailure ??= r.content?.[0]?.text;
      } else if (m.queued) inboxOutcome.queued++;
      else inboxOutcome.ok++;
    }))).then((fs_) => {
      for (const f of fs_.flat()) {
        inboxOutcome.failed++;
        inboxOutcome.firstFailure ??= f;
      }
      build.inboxSendS = (performance.now() - t0) / 1000;
    });
    // Wait until A's inbox holds INBOX entries: bounded in all and by progress.
    const deadline = Date.now() + 30 * 60_000;
    let lastTotal = -1;
    let lastProgress = Date.now();
    let lastSay = 0;
    for (;;) {
      const r = await a.callTool('mesh_inbox', { unread_only: false, limit: 1 }, { timeoutMs: 60_000 });
      total = r.details.mesh.total;
      diag = r.details.mesh.diagnostics ?? {};
      if (total >= INBOX) break;
      if (total !== lastTotal) {
        lastTotal = total;
        lastProgress = Date.now();
      }
      if (Date.now() - lastSay > 10_000) {
        lastSay = Date.now();
        say(`inbox ${total}/${INBOX} (sends answered ${inboxOutcome.ok + inboxOutcome.queued + inboxOutcome.failed})`);
      }
      if (Date.now() - lastProgress > 180_000 || Date.now() > deadline) {
        throw new Error(`A's inbox stopped at ${total} of ${INBOX} entries (refused over quota: ${diag.refused_over_quota}; sends ${JSON.stringify(inboxOutcome)})`);
      }
      await sleep(1000);
    }
    build.inboxS = (performance.now() - t0) / 1000;
    await within(sending, 300_000, 'the senders\' mesh_send calls');
    // Receipts back, so no sender re-sends into the measured state (bounded).
    const receiptsBy = Date.now() + 120_000;
    let outboxLeft = 0;
    for (;;) {
      outboxLeft = 0;
      for (const s of senders) outboxLeft += (await s.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh.outbox;
      if (outboxLeft === 0 || Date.now() > receiptsBy) break;
      await sleep(500);
    }
    build.sendersOutboxLeft = outboxLeft;
    build.inboxSends = inboxOutcome;
    build.refusedOverQuota = diag.refused_over_quota;
    st = (await a.callTool('mesh_identity', {}, { timeoutMs: 10_000 })).details.mesh;
    build.fullSessions = st.sessions;
    build.fullUnread = st.unread;
    build.inboxTotal = total;
    say(`inbox ${total} entries (${st.unread} unread) in ${build.inboxS.toFixed(1)} s; ${JSON.stringify(inboxOutcome)}; senders' outbox left ${outboxLeft}`);
    for (const s of senders) await stopNode(s);
    await stopNode(a);
    build.records = { session: build.sessionRecords, inbox: recordKeys(dirA, 'inbox/').length, inboxp: recordKeys(dirA, 'inboxp/').length, all: recordKeys(dirA).length };
    build.dbBytes = fs.readdirSync(dirA).filter((f) => f.startsWith('state.db')).reduce((s, f) => s + fs.statSync(path.join(dirA, f)).size, 0);
    snaps.full = snapshot(dirA, 'full');
    build.totalS = (performance.now() - tRun) / 1000;
    say(`state built in ${build.totalS.toFixed(1)} s`);

    // ---- 2. cold starts ----------------------------------------------------
    const STATES = ['empty', 'identity', 'sessions', 'full'];
    const results = Object.fromEntries(STATES.map((s) => [s, []]));
    function probe(stateDir) {
      return new Promise((resolve, reject) => {
        const timeoutMs = 180_000;
        const child = spawn(process.execPath, ['--expose-gc', SELF, '--probe'], {
          cwd: ROOT,
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, KARS_COLDSTART_PROBE: JSON.stringify({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, timeoutMs: timeoutMs - 10_000 }) },
        });
        liveChildren.add(child);
        let out = '';
        let err = '';
        child.stdout.on('data', (d) => { out += d; });
        child.stderr.on('data', (d) => { err += d; });
        const t = setTimeout(() => {
          try { child.kill('SIGKILL'); } catch { /* gone */ }
          reject(new Error(`probe on ${stateDir}: no result within ${timeoutMs / 1000} s\n${err.slice(-2000)}`));
        }, timeoutMs);
        child.on('exit', (code, signal) => {
          clearTimeout(t);
          liveChildren.delete(child);
          const line = out.trim().split('\n').pop();
          if (code === 0 && line) {
            try {
              return resolve(JSON.parse(line));
            } catch { /* below */ }
          }
          reject(new Error(`probe on ${stateDir} exited ${code ?? signal}\n${err.slice(-2000)}`));
        });
      });
    }
    for (let run = 1; run <= RUNS; run++) {
      for (const s of STATES) {
        const dir = path.join(base, `run-${run}-${s}`);
        if (s === 'empty') fs.mkdirSync(dir, { mode: 0o700 });
        else fs.cpSync(snaps[s], dir, { recursive: true });
        const r = await probe(dir);
        results[s].push(r);
        fs.rmSync(dir, { recursive: true, force: true });
        say(`run ${run} ${s}: createNode ${r.createMs.toFixed(0)} ms, first mesh_inbox ${r.firstInboxMs.toFixed(1)} ms, core ${(r.idle.core / MiB).toFixed(1)} MiB, RSS ${(r.idle.rss / MiB).toFixed(1)} MiB, sessions ${r.sessions}, inbox ${r.inboxTotal}`);
      }
    }

    // ---- 3. the report -----------------------------------------------------
    const md = report({ results, STATES, build, SESSIONS, INBOX, SENDERS, perSender, RUNS, startedAt, warnLog });
    if (!NO_WRITE) fs.writeFileSync(path.join(BENCH, 'COLDSTART-RESULTS.md'), md);
    console.log(md);
  } finally {
    await within(cleanup(), 60_000, 'cleanup').catch((e) => console.error(e.message));
  }
}

// ---------------------------------------------------------------------------
function median(xs) {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const min = (xs) => Math.min(...xs);
const max = (xs) => Math.max(...xs);

const LOAD_AT_START = os.loadavg().map((x) => x.toFixed(2)).join(' ');

function machine() {
  const cpus = os.cpus();
  let commit = '?';
  let dirty = '';
  try {
    commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const changed = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'wit', 'js-host', 'Cargo.toml', 'Cargo.lock'], { encoding: 'utf8' })
      .split('\n').filter((l) => l.length > 3).map((l) => l.slice(3));
    if (changed.length) dirty = ` + uncommitted changes in ${changed.join(', ')}`;
  } catch { /* not a checkout */ }
  let wasm = '?';
  try {
    wasm = createHash('sha256').update(fs.readFileSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.core.wasm'))).digest('hex').slice(0, 16);
  } catch { /* not built */ }
  return {
    cpu: `${cpus[0]?.model?.trim() ?? '?'} × ${cpus.length}`,
    memGiB: (os.totalmem() / 1024 ** 3).toFixed(1),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    load: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    commit: `${commit}${dirty}`,
    wasm,
  };
}

function report({ results, STATES, build, SESSIONS, INBOX, SENDERS, perSender, RUNS, startedAt, warnLog }) {
  const m = machine();
  const f1 = (x) => (x == null || Number.isNaN(x) ? '—' : x.toFixed(1));
  const f0 = (x) => (x == null || Number.isNaN(x) ? '—' : x.toFixed(0));
  const mib = (x) => x / MiB;
  const rows = [
    ['createNode until resolved (ms)', (r) => r.createMs, f0],
    ['  of which engine time in its batches (ms)', (r) => r.startEngineMs, f0],
    ['first `mesh_inbox {limit:10}` (ms)', (r) => r.firstInboxMs, f1],
    ['connected and registered, from createNode (ms)', (r) => r.onlineMs, f0],
    ['`node.stop()` (ms)', (r) => r.stopMs, f0],
    ['core linear memory after createNode (MiB)', (r) => mib(r.atCreate.core), f1],
    ['core linear memory, idle (MiB)', (r) => mib(r.idle.core), f1],
    ['process RSS after createNode (MiB)', (r) => mib(r.atCreate.rss), f1],
    ['process RSS, idle (MiB)', (r) => mib(r.idle.rss), f1],
    ['main-thread V8 heap used, idle (MiB)', (r) => mib(r.idle.heapUsed), f1],
    ['process RSS before importing the host (MiB)', (r) => mib(r.bare.rss), f1],
    ['sessions restored (`mesh_identity`)', (r) => r.sessions, f0],
    ['inbox entries (`mesh_inbox` total)', (r) => r.inboxTotal, f0],
  ];
  const cell = (s, get, fmt) => {
    const xs = results[s].map(get).filter((x) => typeof x === 'number');
    if (!xs.length) return '—';
    const a = fmt(min(xs));
    const b = fmt(median(xs));
    return a === b ? a : `${a} / ${b}`;
  };
  const table = [
    `| figure (min / median of ${RUNS}) | ${STATES.join(' | ')} |`,
    `|---|${STATES.map(() => '---:').join('|')}|`,
    ...rows.map(([label, get, fmt]) => `| ${label} | ${STATES.map((s) => cell(s, get, fmt)).join(' | ')} |`),
  ].join('\n');

  const med = (s, get) => median(results[s].map(get));
  const per = (hi, lo, get, n) => (med(hi, get) - med(lo, get)) / n;
  const kib = (x) => `${(x / 1024).toFixed(2)} KiB`;
  const coreIdle = (r) => r.idle.core;
  const rssIdle = (r) => r.idle.rss;
  const ms = (hi, lo) => med(hi, (r) => r.createMs) - med(lo, (r) => r.createMs);
  const n = (x) => (typeof x === 'number' ? x.toLocaleString('en-US') : String(x));
  const warnings = [...new Set([...warnLog, ...STATES.flatMap((s) => results[s].flatMap((r) => r.warnings))])].slice(0, 8);

  return `# kars-mesh cold-start benchmark (issue 12)

Written by \`bash scripts/node.sh bench/coldstart.mjs\` on ${startedAt.toISOString()}.

Machine: ${m.cpu}, ${m.memGiB} GiB; ${m.kernel}; Node ${m.node}; load average at the start ${LOAD_AT_START}, at the end ${m.load} (other work on the machine shows up in the figures).
Engine build: commit ${m.commit}; js-host/gen core wasm sha256 ${m.wasm}.

## How the state was built (${build.totalS.toFixed(0)} s in all)

The real AgentMesh relay and registry on loopback (\`tests/harness/servers.mjs\`, started in ${build.serversS.toFixed(1)} s).
Node A (the node under test, \`createNode\` in the bench process) started on an empty directory and registered (${build.firstStartS.toFixed(1)} s).

- **Sessions**: ${n(build.registered)} of ${n(SESSIONS)} peer identities registered with prekeys through the component's toolkit
  (\`tests/peers/raw_peer.mjs\`, 16 at a time, each closed once registered): ${build.registerS.toFixed(1)} s.
  A then sent one \`mesh_send\` to each DID, 32 in flight: ${build.sessionsS.toFixed(1)} s
  (${n(build.sends.ok)} sent, ${build.sends.queued} queued, ${build.sends.failed} failed${build.sends.firstFailure ? `: ${build.sends.firstFailure}` : ''}).
  A held ${n(build.sessionsHeld)} sessions (${n(build.sessionRecords)} \`session/\` records). No cap stopped this: the node's
  peer cap (1,024 peers, 256 half-open, new peers 64 at once then one per 10 s) applies to sessions others open to it.
- **Inbox**: ${SENDERS} other kars nodes (\`createNode\` on their own directories) sent ${perSender.map(n).join(' + ')} messages
  (about 110 bytes of text each) to A, 64 \`mesh_send\` in flight per sender, A running: ${build.inboxS.toFixed(1)} s until
  A's \`mesh_inbox\` reported total ≥ ${n(INBOX)} (${n(build.inboxSends.ok)} sent, ${build.inboxSends.queued} queued,
  ${build.inboxSends.failed} failed; refused over quota: ${build.refusedOverQuota ?? 0}; senders' outbox left unreceipted: ${build.sendersOutboxLeft}).
  A node keeps at most 5,000 unread messages per sender and only 1,000 read ones, so marking entries read
  would not leave 10,000: the entries are **unread**, from ${SENDERS} senders. A then held ${n(build.fullSessions)} sessions
  (the ${n(SESSIONS)} peers and the ${SENDERS} senders), ${n(build.inboxTotal)} inbox entries (${n(build.fullUnread)} unread).
- Records in the full state: ${n(build.records.all)} (${n(build.records.session)} \`session/\`, ${n(build.records.inbox)} \`inbox/\`,
  ${n(build.records.inboxp)} \`inboxp/\`); \`state.db*\` ${(build.dbBytes / MiB).toFixed(1)} MiB.

States measured (A stopped and its directory copied at each point; each run starts on a fresh copy):
**empty** (a new empty directory: a first start, identity and prekeys generated), **identity** (A after its first
start: registered, no session, empty inbox), **sessions** (${n(build.sessionRecords)} sessions, empty inbox), **full**
(${n(build.fullSessions)} sessions, ${n(build.inboxTotal)} unread entries).

## Cold start

Each run is a fresh Node process (\`--expose-gc\`; a GC before the heap and idle figures) with the relay and registry
up; the OS page cache holds the state (it was just copied). *createNode* (the host module already imported:
${f0(median(results.full.map((r) => r.importMs)))} ms median, not included) covers starting the engine's worker,
compiling and instantiating the component, opening the SQLite store, the core's start (identity, prekeys, sessions,
inbox restored) and its first answer. *Idle* is after the node was connected and registered and then idle for 1 s.
RSS is the whole process (main thread and the engine's worker); the V8 heap figure is the main thread's only.
Core memory is WebAssembly linear memory: it only grows, in 64 KiB pages.

${table}

## Derived (medians)

Core memory is the same in every run of a state; process RSS moves by several MiB between runs of the same
state (see min / median above), so the RSS figures below are rough.

- Memory per idle session: core ${kib(per('sessions', 'identity', coreIdle, SESSIONS))}, RSS ${kib(per('sessions', 'identity', rssIdle, SESSIONS))}
  ((sessions − identity) / ${n(SESSIONS)}: the same node with and without its ${n(SESSIONS)} sessions, empty inbox).
- As the issue words it, (full − empty) / ${n(SESSIONS)}: core ${kib(per('full', 'empty', coreIdle, SESSIONS))}, RSS ${kib(per('full', 'empty', rssIdle, SESSIONS))}
  (this includes the ${n(build.inboxTotal)} inbox entries, whose index lives in memory).
- Memory per inbox entry, (full − sessions) / ${n(build.inboxTotal)}: core ${kib(per('full', 'sessions', coreIdle, build.inboxTotal))}, RSS ${kib(per('full', 'sessions', rssIdle, build.inboxTotal))}.
- createNode time added by the sessions: ${f0(ms('sessions', 'identity'))} ms; by the inbox: ${f0(ms('full', 'sessions'))} ms.
${warnings.length ? `\nWarnings logged (first ${warnings.length}; "the engine thread ended unexpectedly (code 0)" is logged during \`node.stop()\`,
whose worker exits before the host marks it stopped; every stop completed):\n\n${warnings.map((w) => `- \`${w.replace(/`/g, "'")}\``).join('\n')}\n` : ''}`;
}

// ---------------------------------------------------------------------------
if (process.argv.includes('--probe')) {
  probeMain().catch((e) => {
    console.error(`probe failed: ${e?.stack ?? e}`);
    process.exit(1);
  });
} else {
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(`coldstart failed: ${e?.stack ?? e}`);
      process.exit(1);
    },
  );
}
