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
import { openMemoryRecordsDb } from '../js-host/state-db.js';
import { IDLE } from '../js-host/event-loop.js';
import { spawnSync } from 'node:child_process';

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
  const running = warmUp(makeCore, { rounds: 6, stateKey: key, next: (fn) => { slices++; setImmediate(fn); } });
  const madeAtOnce = made.length;
  const r = await running;
  clearInterval(tick);
  assert.equal(madeAtOnce, 0, 'no engine made before the first slice (a node\'s own start comes first)');

  assert.equal(r.error, undefined, `the warm-up failed: ${r.error}`);
  assert.equal(r.rounds, 6);
  assert.equal(made.length, 2, 'two engines of their own');
  // The pair speaks the kars delivery envelope (sequence numbers and
  // receipts), as two nodes do: the code a node's own messages run. Its
  // registry answered with capabilities [] until this was checked, so the
  // warm-up ran the path of a peer without receipts instead.
  assert.equal(r.confirmation, 'receipt', `the warm-up's sends were not receipted: ${r.confirmation}`);
  // A session was set up (KNOCK, accepted) and every message went encrypted:
  // 12 messages and their receipts, as ratchet frames.
  assert.equal(r.routed.knock, 1, JSON.stringify(r.routed));
  assert.equal(r.routed.knock_accept, 1, JSON.stringify(r.routed));
  assert.ok(r.routed.message >= 12, `12 messages at least: ${JSON.stringify(r.routed)}`);
  // Sliced: one engine call per turn (and one turn first, to make the pair),
  // and the thread's own timers ran between.
  assert.equal(slices, r.calls + 1);
  assert.ok(r.calls > 6 * 4, `engine calls: ${r.calls}`);
  assert.ok(ticks > 0, 'the event loop turned during the warm-up');
  // Each engine kept its records in its own storage (identity, sessions), dropped at the end.
  for (const storage of made) assert.deepEqual([...storage.list('')], [], 'dropped with the pair');
});

test('warm-up: each engine writes through the store it is given, a transaction per engine call as the node\'s batches, and the store is closed at the end', async () => {
  // The node passes openMemoryRecordsDb: its own store code (SQLite), in memory.
  const stores = [];
  const openStore = () => {
    const s = openMemoryRecordsDb();
    const seen = { sets: 0, commits: 0, inBatchAtSet: 0 };
    stores.push({ s, seen });
    return {
      ...s,
      get: (k) => s.get(k),
      list: (p) => s.list(p),
      set: (k, v) => { seen.sets++; if (s.inBatch) seen.inBatchAtSet++; s.set(k, v); },
      delete: (k) => s.delete(k),
      begin: () => s.begin(),
      commit: () => { if (s.inBatch) seen.commits++; s.commit(); },
      rollback: () => s.rollback(),
      get inBatch() { return s.inBatch; },
      close: () => s.close(),
    };
  };
  const handled = [];
  const r = await warmUp(async (o) => {
    const core = await loadCore({ ...o, log: () => {} });
    const handle = core.engine.handle.bind(core.engine);
    return { ...core, engine: { handle(ev) { handled.push(ev); return handle(ev); } } };
  }, { rounds: 4, stateKey: key, openStore });
  assert.equal(r.error, undefined, `the warm-up failed: ${r.error}`);
  assert.equal(r.rounds, 4);
  assert.equal(stores.length, 2, 'a store for each engine');
  for (const { s, seen } of stores) {
    // Every record the engine asked for went into a transaction, committed.
    assert.ok(seen.sets > 4, `records stored: ${seen.sets}`);
    assert.equal(seen.inBatchAtSet, seen.sets, 'every record written inside a transaction');
    assert.ok(seen.commits > 0, 'committed');
    // Closed with the pair: nothing of it is kept.
    assert.throws(() => s.get('identity'), /finalized|not open/);
  }
  // The idle events the engines asked for are the event loop's own object,
  // as the node's are.
  const idle = handled.filter((ev) => ev.tag === 'idle');
  assert.ok(idle.length > 0, 'the engines had idle time');
  assert.ok(idle.every((ev) => ev === IDLE), 'the loop\'s idle event');
});

test('warm-up: the engine sees events of the shapes the node\'s own have, after their crossing from the main thread', () => {
  // What V8 optimizes in the warm-up (the glue's `handle` first) checks the
  // hidden classes of the objects it was made for. Measured, before: the
  // warm-up's events were object literals and its idle event a literal of
  // its own; the node's first idle event sent `handle` back to unoptimized
  // code and it was compiled again near the node's 37th round trip. Checked
  // with V8's own %HaveSameMap in a child process (the flag it needs is not
  // for a test runner's process).
  const child = `
    import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
    import { loadCore } from ${JSON.stringify(new URL('../js-host/core.js', import.meta.url).href)};
    import { warmUp } from ${JSON.stringify(new URL('../js-host/warm-up.js', import.meta.url).href)};
    import { openMemoryRecordsDb } from ${JSON.stringify(new URL('../js-host/state-db.js', import.meta.url).href)};
    const seen = {};
    const r = await warmUp(async (o) => {
      const core = await loadCore({ ...o, log: () => {} });
      const handle = core.engine.handle.bind(core.engine);
      return { ...core, engine: { handle(ev) { seen[ev.tag] ??= ev; return handle(ev); } } };
    }, { rounds: 2, stateKey: () => Buffer.alloc(32, 7).toString('base64'), openStore: () => openMemoryRecordsDb() });
    if (r.error) throw new Error(r.error);
    // The node's events, as the main thread makes them (js-host/tool-calls.js,
    // sockets.js, http.js) and the engine's thread receives them.
    const made = {
      'tool-call': { tag: 'tool-call', val: { callId: 'c', tool: 'mesh_send', argsJson: '{}' } },
      'socket-frame': { tag: 'socket-frame', val: { socket: 1, text: '{}' } },
      'http-response': { tag: 'http-response', val: { id: 1n, status: 200, body: new Uint8Array(3) } },
    };
    const { port1, port2 } = new MessageChannel();
    const out = {};
    for (const [tag, ev] of Object.entries(made)) {
      port1.postMessage({ t: 'events', events: [ev] });
      const crossed = receiveMessageOnPort(port2).message.events[0];
      if (!seen[tag]) throw new Error('the warm-up handled no ' + tag);
      out[tag] = [%HaveSameMap(seen[tag], crossed), %HaveSameMap(seen[tag].val, crossed.val), %HaveSameMap(seen[tag], ev)];
    }
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', child], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').at(-1));
  for (const [tag, [outer, val, literal]] of Object.entries(out)) {
    assert.ok(outer && val, `${tag}: the warm-up's event has the shape of one that crossed from the main thread (${JSON.stringify(out)})`);
    // And the check can fail: a literal's shape differs from a crossed one's.
    assert.equal(literal, false, `${tag}: a literal has another shape`);
  }
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
  assert.equal(r.calls, 29); // the first slice made the pair
});

test('warm-up: a pair that cannot converse reports why instead of hanging', async () => {
  // A core whose engine never answers a tool call: nothing left to run.
  const r = await warmUp(async () => ({ engine: { handle: () => [] } }), { rounds: 3, stateKey: key });
  assert.equal(r.rounds, 0);
  assert.match(r.error, /mesh_register on a: nothing left to run/);
});

test('warm-up: a send the engine refuses ends the warm-up with its text (it was taken for a message that did not arrive)', async () => {
  // The real core, except that a's mesh_send fails as the engine fails a call.
  let engines = 0;
  const r = await warmUp(async (o) => {
    const mine = engines++ === 0; // the first asked for is a's
    const core = await loadCore({ ...o, log: () => {} });
    const handle = core.engine.handle.bind(core.engine);
    return {
      ...core,
      engine: {
        handle(ev) {
          if (mine && ev.tag === 'tool-call' && ev.val.tool === 'mesh_send') {
            const resultJson = JSON.stringify({ content: [{ type: 'text', text: '❌ Send failed: refused for the test' }], details: { mesh: { error: 'Send failed: refused for the test' } } });
            return [{ tag: 'tool-result', val: { callId: ev.val.callId, resultJson } }];
          }
          return handle(ev);
        },
      },
    };
  }, { rounds: 3, stateKey: key });
  assert.equal(r.rounds, 0);
  assert.match(r.error ?? '', /mesh_send: ❌ Send failed: refused for the test/);
});

test('warm-up: steps aside while the node has events of its own, and goes on once they stop', async () => {
  // On a clock of the test's own: a busy machine's late timer would
  // otherwise look like a quiet moment. whenQuiet reads only `now()` and the
  // node's latest event, and looks again on real timers.
  let clock = 1_000;
  let last = clock;
  let looked = 0;
  let ran = 0;
  const next = whenQuiet(() => last, { now: () => (looked++, clock) });
  next(() => ran++);
  // The node's own events, one every 5 ms of its clock, until whenQuiet has
  // looked (and declined) a few times.
  const busyUntil = performance.now() + 10_000;
  while (looked < 5 && !ran && performance.now() < busyUntil) {
    clock += 5;
    last = clock;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(ran, 0, 'no slice while events keep coming');
  assert.ok(looked >= 5, `whenQuiet looked ${looked} times`);
  // Quiet, but 1 ms short of QUIET_MS: it looks again and still waits.
  clock = last + QUIET_MS - 1;
  const seen = looked;
  while (looked === seen && performance.now() < busyUntil + 10_000) await new Promise((r) => setTimeout(r, 5));
  assert.ok(looked > seen, 'whenQuiet looked again');
  assert.equal(ran, 0, 'not before QUIET_MS of quiet');
  // QUIET_MS of quiet: the slice runs, once.
  clock = last + QUIET_MS;
  const quietFrom = performance.now();
  while (!ran && performance.now() - quietFrom < 10_000) await new Promise((r) => setTimeout(r, 5));
  assert.equal(ran, 1, 'the slice ran once the node was quiet');

  // The default clock (performance.now(), the engine thread's): a slice
  // waits for QUIET_MS after the latest event, then runs.
  const at = performance.now();
  let ranAt = 0;
  whenQuiet(() => at)(() => (ranAt = performance.now()));
  while (!ranAt && performance.now() - at < 10_000) await new Promise((r) => setTimeout(r, 5));
  assert.ok(ranAt, 'the slice ran once the node was quiet (default clock)');
  assert.ok(ranAt - at >= QUIET_MS - 1, `not before QUIET_MS of quiet: ${(ranAt - at).toFixed(1)} ms`);
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

test('a node runs the warm-up in its engine thread after start, and answers tools meanwhile', { timeout: 120_000 }, async (t) => {
  // The default rounds: about 1 s with a tool call every 100 ms (here), so
  // several calls land inside it.
  const { node, logs } = await nodeLogs(t, undefined);
  const line = new RegExp(`^debug: host: engine warm-up: ${WARM_UP_ROUNDS} round trips, \\d+ engine calls, (\\d+) ms$`);
  const ended = () => logs.some((l) => line.test(l));
  // Tool calls until the warm-up's end is logged. Its log line and the
  // answers come over one channel from the engine thread, in order: an
  // answer that came before the line was given before the warm-up ended.
  const answers = [];
  let id;
  while (!ended() && answers.length < 1000) {
    const asked = Date.now();
    id = await node.callTool('mesh_identity', {});
    answers.push({ asked, beforeEnd: !ended() });
    await new Promise((r) => setTimeout(r, 100));
  }
  const endedAt = Date.now();
  assert.ok(ended(), `no warm-up line in:\n${logs.join('\n')}`);
  assert.match(id.details?.mesh?.did ?? '', /^did:mesh:[0-9a-f]{32}$/);
  // When it began, at the latest: its own duration back from when its line
  // was seen (the line comes after its end).
  const ms = Number(logs.map((l) => line.exec(l)).find(Boolean)[1]);
  const began = endedAt - ms;
  const meanwhile = answers.filter((a) => a.asked > began && a.beforeEnd);
  assert.ok(meanwhile.length >= 1, `no tool call was asked and answered during the ${ms} ms warm-up (${answers.length} calls, the first ${answers.length ? began - answers[0].asked : '?'} ms before it began)`);
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
  // Under way: the engine thread works through it, and nothing else here
  // does (measured: about 650 ms of the process's CPU a second with the
  // warm-up, 10 ms without; a busy machine gives it less, not 10 times less).
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  await new Promise((r) => setTimeout(r, 1000));
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  assert.ok(cpuMs > 100, `the warm-up is not under way: ${cpuMs.toFixed(0)} ms of CPU in ${(performance.now() - wall0).toFixed(0)} ms`);
  assert.ok(!logs.some((l) => /warm-up/.test(l)), logs.join('\n'));
  const t0 = Date.now();
  await node.stop();
  assert.ok(Date.now() - t0 < 10_000, `stop took ${Date.now() - t0} ms`);
  assert.ok(!logs.some((l) => /warm-up/.test(l)), logs.join('\n'));
});
