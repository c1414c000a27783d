// Honest offload progress, end to end through the real relay and registry:
// a multi-MiB input reports the bytes and chunks the sandbox receipted,
// rising to the file's size, in a bounded number of events; "task running"
// comes only after the inputs arrived, and no percentage appears that the
// executor did not report. The OpenClaw plugin streams those reports through
// the host's onUpdate during a waiting offload_status. An --exec command
// that prints `KARS_PROGRESS <pct> <text>` lines has its percentages shown,
// and its chunked output reports the chunks received.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from './harness/servers.mjs';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { untilRegistered } from './harness/registered.mjs';
import plugin, { offloadStatusWithUpdates, stopAllNodes } from '../js-host/plugin.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROGRESS_CMD = `"${process.execPath}" "${path.join(HERE, 'fixtures/offload-progress-task.mjs')}"`;
const MIB = 1024 * 1024;
// A percentage anywhere in an event's text.
const PCT = /\b\d+(\.\d+)?\s?%/;

let srv;
const dirs = [];
const nodes = new Set();
let sandboxDir;

before(async () => {
  srv = await startServers();
  sandboxDir = tmp('sandboxes');
});
after(async () => {
  await stopAllNodes().catch(() => {});
  for (const n of nodes) await n.stop().catch(() => {});
  await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(name) {
  const d = mkdtempSync(path.join(tmpdir(), `kars-progress-${name}-`));
  dirs.push(d);
  return d;
}

async function start(name, stateDir, extra = {}) {
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.add(n);
  return untilRegistered(n, name);
}

async function token(ctrl, name) {
  const gen = await ctrl.callTool('pair_generate', { name, slots: 1, capabilities: 'offload', expires: '1d' });
  return gen.details.mesh.token;
}

/** The plugin registered into a minimal OpenClaw API: its tools' execute. */
function pluginAgent(name, stateDir) {
  const tools = new Map();
  plugin.register({
    registrationMode: 'tool-discovery',
    pluginConfig: { state_dir: stateDir, relay_url: srv.relayUrl, registry_url: srv.registryUrl, display_name: name },
    logger: {},
    registerTool: (t) => tools.set(t.name, t),
    registerCommand() {},
    on() {},
  });
  let n = 0;
  return (tool, params, onUpdate) => tools.get(tool).execute(`${name}-${++n}`, params, undefined, onUpdate);
}

/**
 * Follow an offload to its end with `status(args)`, keeping every event once
 * (by seq), from the answers and from any partial results in `updates`.
 */
async function collect(status, updates = [], timeoutMs = 120_000) {
  const events = new Map();
  let after = 0;
  let last;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await status({ wait_seconds: 30, after_events: after });
    last = r.details.mesh;
    assert.ok(Array.isArray(last.events), JSON.stringify(last));
    for (const u of updates) for (const e of u.details.mesh.events) events.set(e.seq, e);
    for (const e of last.events) events.set(e.seq, e);
    after = last.events_total;
    if (last.phase === 'done' || last.phase === 'error') break;
  }
  const all = [...events.values()].sort((a, b) => a.seq - b.seq);
  // Nothing missed: every event from the first to the last one was seen.
  assert.deepEqual(all.map((e) => e.seq), Array.from({ length: last.events_total }, (_, i) => i + 1));
  return { events: all, last };
}

test('a 12 MiB input: acknowledged bytes rise to its size, then the task runs; no made-up percentage; progress streamed to onUpdate', { timeout: 180_000 }, async () => {
  // The built-in executor: it reports no percentage, ever.
  const ctrl = await start('ctrl-p', tmp('ctrl-p'), { role: 'controller', clusterName: 'lab', sandboxes: { dir: sandboxDir, progressMs: 500 } });
  const call = pluginAgent('carol', tmp('carol'));
  const paired = await call('mesh_pair', { token: await token(ctrl, 'carol') });
  assert.match(paired.content[0].text, /^✅ Paired successfully/, paired.content[0].text);

  const work = tmp('work');
  const big = Buffer.alloc(12 * MIB);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 0xff;
  writeFileSync(path.join(work, 'big.bin'), big);
  const sub = await call('cloud_offload', { task: 'look at the big file', files: [path.join(work, 'big.bin')], timeout_minutes: 5 });
  assert.match(sub.content[0].text, /^☁️ Offload submitted/, sub.content[0].text);

  const updates = [];
  const { events, last } = await collect((args) => call('offload_status', args, (u) => updates.push(u)), updates);
  assert.equal(last.phase, 'done', JSON.stringify(last));
  const texts = events.map((e) => `${e.phase}: ${e.text}`).join('\n');

  // The input: what the sandbox receipted, a tenth at a time, to the end.
  const input = events.filter((e) => e.progress?.kind === 'input');
  assert.ok(input.length >= 2 && input.length <= 11, texts);
  const bytes = input.map((e) => e.progress.bytes_done);
  assert.ok(bytes.every((b, i) => i === 0 || b > bytes[i - 1]), `not increasing: ${bytes}\n${texts}`);
  const end = input[input.length - 1].progress;
  assert.equal(end.bytes_done, big.length);
  assert.equal(end.bytes_total, big.length);
  assert.equal(end.chunks_done, end.chunks_total);
  assert.ok(end.chunks_total > 16, `${end.chunks_total} chunks`);
  for (const e of input) assert.match(e.text, /^input big\.bin: \d+\.\d of 12\.0 MiB \(\d+ of \d+ chunks acknowledged\)$/, e.text);
  assert.equal(input[input.length - 1].text, `input big.bin: 12.0 of 12.0 MiB (${end.chunks_total} of ${end.chunks_total} chunks acknowledged)`);

  // "task running" only after the input arrived, and from the sandbox.
  const running = events.findIndex((e) => e.phase === 'running');
  assert.ok(running > events.indexOf(input[input.length - 1]), texts);
  assert.match(events[running].text, /^task running in the sandbox \(sandbox: executing — task started with 1 input file\(s\), 12582912 bytes\)$/);
  assert.ok(!events.slice(0, running).some((e) => e.phase === 'running' || /task running/.test(e.text)), texts);

  // No percentage the executor did not report.
  for (const e of events) {
    assert.equal(e.progress?.pct, undefined, JSON.stringify(e));
    assert.doesNotMatch(e.text, PCT, e.text);
  }

  // The plugin streamed the input's progress through onUpdate, in OpenClaw's
  // partial-result shape, with public text (no file name). An update lists
  // every new line (a heartbeat and a receipt count that arrived together
  // are one update); its progress text tells the newest.
  const lines = (u) => u.content[0].text.split('\n');
  const newest = (u) => lines(u)[lines(u).length - 1];
  const shown = JSON.stringify(updates.map((u) => u.content[0].text));
  assert.ok(updates.some((u) => lines(u).some((l) => /^input big\.bin:/.test(l))), shown);
  for (const u of updates) {
    assert.equal(u.progress.visibility, 'channel');
    assert.equal(u.progress.privacy, 'public');
    assert.equal(u.progress.id, `kars-mesh-offload-${last.request_id}`);
    assert.doesNotMatch(u.progress.text, /big\.bin/);
    assert.ok(u.details.mesh.events.length > 0);
    if (/^input big\.bin:/.test(newest(u))) {
      assert.match(u.progress.text, /^Offload [0-9a-f]{8}: input \d+\.\d of 12\.0 MiB \(\d+ of \d+ chunks acknowledged\)$/);
    } else if (/^sandbox: waiting — /.test(newest(u))) {
      // The sandbox's heartbeats before the run (every 500 ms here) do not say it runs.
      assert.match(u.progress.text, /^Offload [0-9a-f]{8}: the sandbox is waiting to start$/);
    } else {
      // Its heartbeats during the run say only that it runs (no percentage: checked above).
      assert.match(newest(u), /^sandbox: executing — /, shown);
    }
  }
  assert.ok(updates.some((u) => lines(u).some((l) => /^sandbox: waiting — /.test(l))), shown);

  // The report the built-in executor returned names the input as it arrived.
  const report = readFileSync(path.join(tmpDirOf('carol'), 'files', last.outputs[0].path), 'utf8');
  assert.ok(report.includes(createHash('sha256').update(big).digest('hex')), report);
});

/** The state directory the plugin agent `name` was given. */
function tmpDirOf(name) {
  const d = dirs.find((x) => path.basename(x).startsWith(`kars-progress-${name}-`));
  assert.ok(d, name);
  return d;
}

test('an --exec command reports its own percentages; its chunked output reports the chunks received', { timeout: 180_000 }, async () => {
  const ctrl = await start('ctrl-x', tmp('ctrl-x'), { role: 'controller', clusterName: 'lab', sandboxes: { dir: sandboxDir, exec: PROGRESS_CMD } });
  const dave = await start('dave', tmp('dave'));
  const r = await dave.callTool('mesh_pair', { token: await token(ctrl, 'dave') }, { timeoutMs: 40_000 });
  assert.match(r.content[0].text, /^✅ Paired successfully/, r.content[0].text);
  const size = 12 * MIB;
  const sub = await dave.callTool('cloud_offload', { task: `report progress, output ${size}`, timeout_minutes: 5 });
  assert.match(sub.content[0].text, /^☁️ Offload submitted/);

  const { events, last } = await collect((args) => dave.callTool('offload_status', args, { timeoutMs: 60_000 }));
  assert.equal(last.phase, 'done', JSON.stringify(last));
  const texts = events.map((e) => `${e.phase}: ${e.text}`).join('\n');

  // Exactly the command's percentages, with its words, in order.
  const run = events.filter((e) => e.progress?.kind === 'run' && e.progress.pct !== undefined);
  assert.deepEqual(run.map((e) => e.progress.pct), [25, 75], texts);
  assert.match(run[0].text, /^25% \(sandbox: executing — reading the inputs \(running for \d+ s\)\)$/);
  assert.match(run[1].text, /^75% \(sandbox: executing — writing the result \(running for \d+ s\)\)$/);
  for (const e of events) if (PCT.test(e.text)) assert.ok(run.includes(e), `a percentage the command did not give: ${e.text}`);

  // The output: chunks received, rising, before the file is whole.
  const out = events.filter((e) => e.progress?.kind === 'output');
  assert.ok(out.length >= 1 && out.length <= 10, texts);
  const chunks = out.map((e) => e.progress.chunks_done);
  assert.ok(chunks.every((c, i) => i === 0 || c > chunks[i - 1]), `${chunks}`);
  for (const e of out) {
    assert.match(e.text, /^output result\.bin: \d+\.\d of 12\.0 MiB \(\d+ of \d+ chunks received\)$/, e.text);
    assert.ok(e.progress.chunks_done < e.progress.chunks_total);
    assert.equal(e.progress.bytes_total, size);
  }
  const received = events.findIndex((e) => e.text === `received result.bin (${size} bytes)`);
  assert.ok(received > events.indexOf(out[out.length - 1]), texts);
  const got = readFileSync(path.join(dirs.find((d) => path.basename(d).startsWith('kars-progress-dave-')), 'files', last.outputs[0].path));
  assert.equal(got.length, size);
  // The progress lines are not part of the summary (the output's tail).
  assert.match(last.summary, new RegExp(`wrote ${size} bytes`));
  assert.doesNotMatch(last.summary, /KARS_PROGRESS/);
});

test('the plugin streams progress-only news through onUpdate and answers on other news, the end or an error', async () => {
  const ev = (seq, progress) => ({ seq, at_ms: seq, phase: 'acknowledged', text: `event ${seq}`, ...(progress ? { progress } : {}) });
  const input = (done) => ({ kind: 'input', name: 'a.bin', bytes_done: done * 1024, bytes_total: 4096, chunks_done: done, chunks_total: 4 });
  const snap = (events, more = {}) => ({ content: [{ type: 'text', text: 'snapshot' }], details: { mesh: { request_id: 'abcdef12-0000', active: true, events, events_total: events.length, ...more } } });
  const run = async (answers, params, onUpdate) => {
    const calls = [];
    const call = async (p) => {
      calls.push(p);
      return answers.shift();
    };
    const r = await offloadStatusWithUpdates(call, params, onUpdate);
    return { r, calls };
  };

  // Two progress reports, then a phase: one answer, two updates, each wait
  // picking up after the last event seen.
  const e = [ev(1), ev(2, input(1)), ev(3, input(4)), ev(4)];
  const answers = [snap(e.slice(0, 2)), snap(e.slice(0, 3)), snap(e)];
  const updates = [];
  const { r, calls } = await run([...answers], { wait_seconds: 60, after_events: 1 }, (u) => updates.push(u));
  assert.equal(r, answers[2]);
  assert.deepEqual(calls.map((c) => c.after_events), [1, 2, 3]);
  assert.ok(calls.slice(1).every((c) => c.wait_seconds > 0 && c.wait_seconds <= 60));
  assert.deepEqual(updates.map((u) => u.content[0].text), ['event 2', 'event 3']);
  assert.deepEqual(updates.map((u) => u.progress.text), [
    'Offload abcdef12: input 1.0 of 4.0 KiB (1 of 4 chunks acknowledged)',
    'Offload abcdef12: input 4.0 of 4.0 KiB (4 of 4 chunks acknowledged)',
  ]);
  assert.equal(updates[1].details.mesh, answers[1].details.mesh);

  // Without after_events the first answer's news is its newest event.
  const first = [snap([ev(1), ev(2, input(1))]), snap([ev(1), ev(2, input(1)), ev(3)])];
  const quiet = await run([...first], { wait_seconds: 5 }, () => {});
  assert.equal(quiet.r, first[1]);
  assert.equal(quiet.calls[1].after_events, 2);

  // The end, an error, no wait, or a wait that ran out without news: the
  // engine's answer as it is. A throwing onUpdate ends nothing.
  const done = snap([ev(1, input(1))], { active: false });
  assert.equal((await run([done], { wait_seconds: 5, after_events: 0 }, () => {})).r, done);
  const err = { content: [{ type: 'text', text: '❌ offload_status: bad' }], details: { mesh: { error: 'bad' } } };
  assert.equal((await run([err], { wait_seconds: 5 }, () => {})).r, err);
  // No wait: one call and no update. (onUpdate's throws are swallowed, so
  // the updates are collected and checked; a second answer is there so that
  // a wrong second call would not just end on an empty answer.)
  const plain = snap([ev(1, input(1))]);
  const noWait = [];
  const once = await run([plain, snap([ev(1, input(1)), ev(2)])], {}, (u) => noWait.push(u));
  assert.deepEqual(noWait, [], 'no update without a wait');
  assert.equal(once.calls.length, 1, 'one call without a wait');
  assert.equal(once.r, plain);
  const timedOut = snap([ev(1, input(1))]);
  assert.equal((await run([timedOut], { wait_seconds: 5, after_events: 1 }, () => {})).r, timedOut);
  const thrown = await run([snap([ev(1, input(1))]), snap([ev(1, input(1)), ev(2)])], { wait_seconds: 5, after_events: 0 }, () => {
    throw new Error('host callback failed');
  });
  assert.equal(thrown.calls.length, 2);
});
