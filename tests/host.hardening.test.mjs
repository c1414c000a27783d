// Host hardening (js-host/): the engine's memory ceiling, sealed-only
// records, no symbolic link followed in the files area, one-use sandbox
// directories, the --exec command isolated from the cluster's secrets,
// file-read refusing secret places, log lines escaped. No relay needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCore, CoreMemoryError, MAX_SAFE_CORE_MEMORY } from '../js-host/core.js';
import { createNode } from '../js-host/node-host.js';
import { openStateDir, NotSealedError, notSealedReason } from '../js-host/state-db.js';
import { readRecord, recordKeys } from './harness/state-db.mjs';
import { knownAgentStates, serverEnv } from '../js-host/cluster.js';
import { createJobs, isolationSupport, killSandboxes, sweepSandboxDirs } from '../js-host/jobs.js';
import { escapeLog } from '../js-host/log-escape.js';
import { planOperator } from '../js-host/cli-operator.js';
import { isolationMissing, skipTestUnlessCi } from './harness/prereq.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function tmpDir(t, name = 'h') {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-hardening-${name}-`));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(fn, what, ms = 15_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Events a createJobs instance dispatches, with a way to wait for one. */
function eventSink() {
  const events = [];
  const waiters = [];
  return {
    events,
    dispatch(ev) {
      events.push(ev);
      for (const w of [...waiters]) if (w.pred(ev)) { waiters.splice(waiters.indexOf(w), 1); clearTimeout(w.timer); w.resolve(ev); }
    },
    next(pred, ms = 30_000) {
      const found = events.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        // A ref'd timer: the jobs' children are unref'd and would not keep the test alive.
        const w = { pred, resolve, timer: setTimeout(() => reject(new Error('no such event in time')), ms) };
        waiters.push(w);
      });
    },
  };
}

// ---- 1. memory ceiling ------------------------------------------------------

/** The declared limits of the one memory of a core wasm module, in pages. */
function memoryLimits(file) {
  const b = fs.readFileSync(file);
  let o = 8;
  const u = () => { let r = 0, s = 0, x; do { x = b[o++]; r += (x & 0x7f) * 2 ** s; s += 7; } while (x & 0x80); return r; };
  const skipName = () => { const n = u(); o += n; };
  const limits = () => { const f = b[o++]; const min = u(); return { min, max: f & 1 ? u() : undefined }; };
  const mems = [];
  while (o < b.length) {
    const id = b[o++];
    const size = u();
    const end = o + size;
    if (id === 2) {
      for (let n = u(); n > 0; n--) {
        skipName(); skipName();
        const kind = b[o++];
        if (kind === 0) u(); else if (kind === 1) { o++; limits(); } else if (kind === 2) mems.push(limits()); else if (kind === 3) o += 2; else { o++; u(); }
      }
    } else if (id === 5) {
      for (let n = u(); n > 0; n--) mems.push(limits());
    }
    o = end;
  }
  return mems;
}

test('memory: the built core declares a linear memory maximum of at most 1 GiB (scripts/build.sh --max-memory)', () => {
  const mems = memoryLimits(path.join(ROOT, 'js-host/gen/kars_mesh.component.core.wasm'));
  assert.equal(mems.length, 1);
  assert.notEqual(mems[0].max, undefined, 'no maximum declared: rebuild with bash scripts/build.sh');
  assert.ok(mems[0].max * 65536 <= 2 ** 30, `maximum ${mems[0].max * 65536} bytes`);
  const script = fs.readFileSync(path.join(ROOT, 'scripts/build.sh'), 'utf8');
  assert.match(script, /--max-memory=\$MAX_MEMORY/);
});

test('memory: memoryBytes() reports the core\'s linear memory; a call that leaves it past the ceiling is fatal, and so is every later call', async () => {
  const probe = await loadCore();
  const start = probe.memoryBytes();
  assert.ok(start > 0 && start % 65536 === 0, String(start));
  assert.equal(MAX_SAFE_CORE_MEMORY, 2 ** 31 - 1);

  const core = await loadCore({ memoryLimit: start });
  assert.equal(core.memoryBytes(), start);
  // A big event makes the core grow its memory past the (test) ceiling.
  const big = { tag: 'tool-call', val: { callId: 'x', tool: 'mesh_identity', argsJson: JSON.stringify({ pad: 'a'.repeat(4 << 20) }) } };
  assert.throws(() => core.engine.handle(big), (e) => e instanceof CoreMemoryError && e.code === 'KARS_MESH_CORE_MEMORY' && /signed 32-bit/.test(e.message));
  assert.ok(core.memoryBytes() > start);
  // Dead: nothing more comes out of it.
  assert.throws(() => core.engine.handle({ tag: 'stop' }), CoreMemoryError);
  assert.throws(() => core.toolkit.identityGenerate(new Uint8Array(32)), CoreMemoryError);
});

test('memory: a node whose core passes the ceiling stops with KARS_MESH_CORE_MEMORY; node.memoryBytes() measures it', async (t) => {
  const stateDir = tmpDir(t, 'mem');
  const start = (await loadCore()).memoryBytes();
  const logs = [];
  const node = await createNode({
    stateDir,
    log: (l, m) => logs.push(`${l}: ${m}`),
    loadCoreImpl: (fns) => loadCore({ ...fns, memoryLimit: start + 4 * 65536 }),
  });
  t.after(() => node.stop());
  assert.ok(node.memoryBytes() >= start);
  await assert.rejects(node.callTool('mesh_identity', { pad: 'a'.repeat(8 << 20) }), { code: 'KARS_MESH_CORE_MEMORY' });
  assert.equal(node.stopped, true);
  assert.ok(logs.some((l) => l.startsWith('error:') && l.includes('linear memory')), logs.join('\n'));
});

// ---- 2. sealed records only ---------------------------------------------------

test('sealed-only storage: set refuses bytes that are not a sealed record (unknown version, under 29 bytes); v1 and v2 land', (t) => {
  const dir = tmpDir(t, 'sealed');
  const s = openStateDir(dir, { sealedOnly: true });
  t.after(() => s.close());
  const rec = (version, len) => { const b = new Uint8Array(len); b[0] = version; return b; };
  const plaintext = new TextEncoder().encode('{"seed":"0123456789abcdef0123456789abcdef"}');
  assert.throws(() => s.set('identity', plaintext), (e) => e instanceof NotSealedError && /first byte 123 is not a known seal version/.test(e.message));
  assert.throws(() => s.set('identity', rec(1, 28)), /28 bytes, shorter than the 29/);
  // Version 3 (a sealed head, then a trailer): its head's length must fit.
  assert.throws(() => s.set('identity', rec(3, 64)), (e) => e instanceof NotSealedError && /sealed head is said to be 0 bytes/.test(e.message));
  // Its trailer must be an encrypted message frame, and only an outbox entry has one.
  const frameText = new TextEncoder().encode('{"v":1,"type":"message","from":"a","to":"b","id":"f","ciphertext":"AAAA"}');
  const v3 = new Uint8Array(5 + 28 + frameText.length);
  v3[0] = 3;
  new DataView(v3.buffer).setUint32(1, 60_000, true);
  assert.throws(() => s.set('outbox/did:mesh:b/f', v3), /sealed head is said to be 60000 bytes/);
  new DataView(v3.buffer).setUint32(1, 28, true);
  v3.set(frameText, 33);
  assert.equal(notSealedReason(v3, 'outbox/did:mesh:b/f'), undefined);
  assert.throws(() => s.set('identity', v3), (e) => e instanceof NotSealedError && /only an outbox entry keeps an unsealed trailer/.test(e.message));
  assert.throws(() => s.set('inbox/1', v3), /only an outbox entry/);
  const plainTrailer = v3.slice();
  plainTrailer.set(new TextEncoder().encode('{"seed":"0123456789abcdef012345678'), 33);
  assert.throws(() => s.set('outbox/did:mesh:b/f', plainTrailer), /trailer \(format 3\) is not an encrypted message frame/);
  assert.throws(() => s.set('outbox/did:mesh:b/g', rec(3, 32)), /shorter than the 33/);
  s.set('outbox/did:mesh:b/f', v3);
  assert.deepEqual(s.list('outbox/'), ['outbox/did:mesh:b/f']);
  s.delete('outbox/did:mesh:b/f');
  assert.throws(() => s.set('identity', rec(4, 64)), NotSealedError);
  assert.throws(() => s.set('identity', rec(0, 64)), NotSealedError);
  assert.deepEqual(s.list(''), [], 'nothing written');
  assert.equal(s.size, 0);
  s.set('a', rec(1, 29));
  s.set('b', rec(2, 100));
  assert.deepEqual(s.list(''), ['a', 'b']);
  assert.equal(notSealedReason(rec(2, 29)), undefined);
  // Without the option (tests of the storage layer), anything goes, as before.
  const raw = openStateDir(tmpDir(t, 'raw'));
  t.after(() => raw.close());
  raw.set('x', plaintext);
});

test('sealed-only storage: a core that stores plaintext is stopped before it reaches disk; the real core\'s records are sealed', async (t) => {
  const stateDir = tmpDir(t, 'sealed-node');
  const result = (callId) => ({ tag: 'tool-result', val: { callId, resultJson: JSON.stringify({ content: [{ type: 'text', text: 'ok' }], details: { mesh: { did: 'did:mesh:' + '0'.repeat(32) } } }) } });
  const node = await createNode({
    stateDir,
    sealedRecords: true,
    log: () => {},
    loadCoreImpl: async () => ({
      engine: {
        handle(ev) {
          if (ev.tag === 'tool-call' && ev.val.tool === 'mesh_identity') return [result(ev.val.callId)];
          if (ev.tag === 'tool-call') return [{ tag: 'store', val: ['sessions/x', new TextEncoder().encode('{"root_key":"secret plaintext"}')] }, result(ev.val.callId)];
          return [];
        },
      },
      toolkit: {},
    }),
  });
  t.after(() => node.stop());
  await assert.rejects(node.callTool('leak', {}), (e) => e.code === 'KARS_MESH_STORE' && /not a sealed record/.test(e.message));
  assert.deepEqual(recordKeys(stateDir), [], 'nothing of the refused batch reached the database');

  // The real core (sealed-only by default) writes its identity sealed, version 1 or 2.
  const realDir = tmpDir(t, 'sealed-real');
  const real = await createNode({ stateDir: realDir, log: () => {} });
  await real.stop();
  const id = readRecord(realDir, 'identity');
  assert.ok([1, 2].includes(id[0]) && id.length >= 29);
});

// ---- 3. no symbolic link followed in the files area ---------------------------

test('files area: a planted temp-file symlink, a symlinked directory on the way, or a symlinked target are never written through', (t) => {
  const base = tmpDir(t, 'links');
  const files = path.join(base, 'files');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  const victim = path.join(outside, 'victim.txt');
  fs.writeFileSync(victim, 'original');
  const jobs = createJobs({ filesDir: files, dispatch: () => {}, log: () => {} });

  // The temp path, planted as a link to a file outside: refused, not followed.
  fs.mkdirSync(path.join(files, 'work', 'in'), { recursive: true });
  fs.symlinkSync(victim, path.join(files, 'work', 'in', `a.txt.tmp-${process.pid}`));
  assert.throws(() => jobs.fileWrite('work/in/a.txt', Buffer.from('attacker')), /already exists/);
  assert.equal(fs.readFileSync(victim, 'utf8'), 'original');
  assert.equal(fs.existsSync(path.join(files, 'work', 'in', 'a.txt')), false);

  // A directory on the way replaced by a link to outside: refused.
  fs.symlinkSync(outside, path.join(files, 'incoming'));
  assert.throws(() => jobs.fileWrite('incoming/victim.txt', Buffer.from('attacker')), /not a plain directory/);
  assert.throws(() => jobs.fileWrite('incoming/new/x.txt', Buffer.from('attacker')), /not a plain directory/);
  assert.equal(fs.readFileSync(victim, 'utf8'), 'original');
  assert.deepEqual(fs.readdirSync(outside), ['victim.txt']);

  // The target itself a link: replaced by the new file, the link's target untouched.
  fs.symlinkSync(victim, path.join(files, 'report.txt'));
  jobs.fileWrite('report.txt', Buffer.from('ours'));
  assert.equal(fs.lstatSync(path.join(files, 'report.txt')).isFile(), true);
  assert.equal(fs.readFileSync(path.join(files, 'report.txt'), 'utf8'), 'ours');
  assert.equal(fs.readFileSync(victim, 'utf8'), 'original');

  // Erasing through a symlinked directory: refused, outside untouched.
  assert.throws(() => jobs.fileErase('incoming/victim.txt'), /not a plain directory/);
  assert.equal(fs.readFileSync(victim, 'utf8'), 'original');
  jobs.fileErase('incoming'); // the link itself may go
  assert.equal(fs.existsSync(path.join(files, 'incoming')), false);
  assert.equal(fs.readFileSync(victim, 'utf8'), 'original');
});

// ---- 4. one-use sandbox directories -----------------------------------------

/** A TCP server that accepts and never answers: a sandbox registering with it stays up. */
async function hangingServer(t) {
  const net = await import('node:net');
  const socks = new Set();
  const srv = net.createServer((c) => { socks.add(c); c.on('error', () => {}); });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => { for (const c of socks) c.destroy(); srv.close(); });
  return `http://127.0.0.1:${srv.address().port}`;
}

function sandboxJobs(t, sbDir, extra = {}) {
  const sink = eventSink();
  const base = path.dirname(sbDir);
  const jobs = createJobs({
    filesDir: path.join(base, 'ctrl-files'),
    dispatch: sink.dispatch,
    log: () => {},
    sandboxes: { dir: sbDir, relayUrl: 'http://127.0.0.1:1', registryUrl: 'http://127.0.0.1:1', ...extra },
  });
  t.after(() => killSandboxes(sbDir, { graceMs: 500 }));
  return { jobs, sink };
}

const sandboxSpec = (name, rid = '11111111-2222-4333-8444-555555555555') =>
  JSON.stringify({ name, requester: 'did:mesh:' + '1'.repeat(32), request_id: rid, task: 't', files: [], timeout_minutes: 1 });

test('sandbox dirs: a killed sandbox\'s whole directory (state, state.key) is erased; an existing directory is never reused', async (t) => {
  const base = tmpDir(t, 'sb');
  const sbDir = path.join(base, 'sandboxes');
  const hang = await hangingServer(t);
  const { jobs, sink } = sandboxJobs(t, sbDir, { relayUrl: hang, registryUrl: hang });
  const name = 'offload-0123456789abcdef';
  jobs.jobStart({ id: 7n, kind: 'sandbox', specJson: sandboxSpec(name) });
  const dir = path.join(sbDir, name);
  // It is trying to register with a relay that is not there: running, with its state.
  await waitFor(() => fs.existsSync(path.join(dir, 'state', 'state.key')), 'the sandbox state key');
  assert.ok(fs.existsSync(path.join(dir, 'job.json')));

  // The same name again (another offload): refused, the running one untouched.
  jobs.jobStart({ id: 8n, kind: 'sandbox', specJson: sandboxSpec(name, '99999999-2222-4333-8444-555555555555') });
  const refused = await sink.next((e) => e.tag === 'job-exited' && e.val.id === 8n);
  assert.equal(refused.val.code, -1);
  assert.match(refused.val.log, /already exists; a sandbox directory is used once/);
  assert.ok(fs.existsSync(path.join(dir, 'state', 'state.key')));

  jobs.jobKill(7n);
  await waitFor(() => !fs.existsSync(dir), 'the killed sandbox\'s directory to be erased');
  await waitFor(() => fs.readdirSync(sbDir).length === 0, 'nothing left in the sandboxes directory');
});

test('sandbox dirs: a sandbox that exits on its own is reported and its directory erased', async (t) => {
  const base = tmpDir(t, 'sb-exit');
  const sbDir = path.join(base, 'sandboxes');
  // Nothing listens on port 1: registration fails and the sandbox exits.
  const { jobs, sink } = sandboxJobs(t, sbDir);
  const name = 'offload-00000000000000aa';
  jobs.jobStart({ id: 3n, kind: 'sandbox', specJson: sandboxSpec(name) });
  const ev = await sink.next((e) => e.tag === 'job-exited' && e.val.id === 3n, 60_000);
  assert.notEqual(ev.val.code, 0);
  await waitFor(() => !fs.existsSync(path.join(sbDir, name)), 'the directory to be erased');
});

test('sandbox dirs: a controller starting erases the directories of sandboxes that are not running, keeps live ones', async (t) => {
  const base = tmpDir(t, 'sb-sweep');
  const sbDir = path.join(base, 'sandboxes');
  const dead = path.join(sbDir, 'offload-dead000000000000');
  fs.mkdirSync(path.join(dead, 'state', 'files', 'work', 'in'), { recursive: true });
  fs.writeFileSync(path.join(dead, 'state', 'state.key'), Buffer.alloc(32, 7));
  fs.writeFileSync(path.join(dead, 'job.json'), JSON.stringify({ job: '1', pid: 2 ** 22 + 12345 }));
  fs.mkdirSync(path.join(sbDir, 'offload-nojobjson0000000'), { recursive: true });
  // A live one, started by a first controller.
  const hang = await hangingServer(t);
  const first = sandboxJobs(t, sbDir, { relayUrl: hang, registryUrl: hang });
  const live = 'offload-11ve000000000000';
  first.jobs.jobStart({ id: 9n, kind: 'sandbox', specJson: sandboxSpec(live) });
  await waitFor(() => fs.existsSync(path.join(sbDir, live, 'job.json')), 'the live sandbox');
  // The controller restarts.
  sandboxJobs(t, sbDir);
  assert.deepEqual(fs.readdirSync(sbDir), [live]);
  await killSandboxes(sbDir, { graceMs: 500 });
  assert.deepEqual(fs.readdirSync(sbDir), [], 'cluster down erases what it stopped');
  assert.deepEqual(sweepSandboxDirs(sbDir), []);
});

test('exec: the work directory (inputs, outputs) is erased once the job ended and its outputs were read', async (t) => {
  const base = tmpDir(t, 'exec-work');
  const files = path.join(base, 'state', 'files');
  const sink = eventSink();
  const jobs = createJobs({
    filesDir: files, dispatch: sink.dispatch, log: () => {},
    exec: 'tr a-z A-Z < "$KARS_INPUT_DIR/a.txt" > "$KARS_OUTPUT_DIR/b.txt"',
    execUnisolated: !isolationSupport().ok, // this test is about the work dir, not isolation
  });
  jobs.fileWrite('work/in/a.txt', Buffer.from('hello'));
  jobs.jobStart({ id: 1n, kind: 'exec', specJson: JSON.stringify({ workdir: 'work', timeout_ms: 20_000 }) });
  const ev = await sink.next((e) => e.tag === 'job-exited');
  assert.equal(ev.val.code, 0, ev.val.log);
  assert.deepEqual(ev.val.outputs.map(([n, b]) => [n, Buffer.from(b).toString()]), [['b.txt', 'HELLO']]);
  assert.equal(fs.existsSync(path.join(files, 'work')), false);
});

// ---- 5. the --exec command is isolated ----------------------------------------

/** A cluster-like layout: controller state, another sandbox, this sandbox with an input. */
function clusterLayout(t) {
  const cluster = tmpDir(t, 'cluster');
  const ctrl = path.join(cluster, 'controller');
  const sb = path.join(cluster, 'sandboxes');
  const other = path.join(sb, 'offload-other00000000000');
  const me = path.join(sb, 'offload-me0000000000000');
  for (const d of [ctrl, path.join(other, 'state'), path.join(me, 'state', 'files')]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(ctrl, 'state.key'), 'CONTROLLER-SECRET', { mode: 0o600 });
  fs.writeFileSync(path.join(other, 'state', 'state.key'), 'OTHER-SANDBOX-SECRET', { mode: 0o600 });
  fs.writeFileSync(path.join(other, 'spec.json'), '{"task":"OTHER-TASK"}', { mode: 0o600 });
  fs.writeFileSync(path.join(me, 'state', 'state.key'), 'OWN-SECRET', { mode: 0o600 });
  fs.writeFileSync(path.join(cluster, 'control.sock'), 'not a socket here');
  return { cluster, ctrl, sb, other, me, files: path.join(me, 'state', 'files') };
}

const PROBE = (L) => [
  `cat ${L.ctrl}/state.key`,
  `ls ${L.other}`,
  `cat ${L.other}/state/state.key`,
  `cat ${L.me}/state/state.key`,
  `ls ${L.cluster}`,
  `umount ${L.sb} 2>/dev/null; umount ${L.cluster} 2>/dev/null; cat ${L.ctrl}/state.key`,
  'cat "$KARS_INPUT_DIR/in.txt" > "$KARS_OUTPUT_DIR/copy.txt"',
  'echo written > "$KARS_OUTPUT_DIR/new.txt"',
  'echo finished',
].join('; ');

function execJobs(L, extra = {}) {
  const sink = eventSink();
  const jobs = createJobs({
    filesDir: L.files, dispatch: sink.dispatch, log: () => {},
    exec: PROBE(L),
    execHide: [L.cluster, L.ctrl, L.sb],
    ...extra,
  });
  jobs.fileWrite('work/in/in.txt', Buffer.from('INPUT-DATA'));
  jobs.jobStart({ id: 5n, kind: 'exec', specJson: JSON.stringify({ workdir: 'work', timeout_ms: 20_000 }) });
  return sink.next((e) => e.tag === 'job-exited');
}

test('exec isolation: the command cannot read the controller\'s state.key, other sandboxes or its own state.key; it reads its inputs and writes outputs', async (t) => {
  if (skipTestUnlessCi(t, isolationMissing())) return;
  const L = clusterLayout(t);
  const ev = await execJobs(L);
  const log = ev.val.log;
  for (const secret of ['CONTROLLER-SECRET', 'OTHER-SANDBOX-SECRET', 'OWN-SECRET', 'spec.json', 'control.sock']) {
    assert.ok(!log.includes(secret), `${secret} leaked:\n${log}`);
  }
  assert.match(log, /finished/);
  assert.equal(ev.val.code, 0, log);
  const out = Object.fromEntries(ev.val.outputs.map(([n, b]) => [n, Buffer.from(b).toString()]));
  assert.deepEqual(out, { 'copy.txt': 'INPUT-DATA', 'new.txt': 'written\n' });
  assert.equal(fs.readFileSync(path.join(L.ctrl, 'state.key'), 'utf8'), 'CONTROLLER-SECRET', 'nothing unmounted outside');
});

test('exec isolation: where it cannot be set up the command is not run, and the log says why and names --exec-unisolated', async (t) => {
  const L = clusterLayout(t);
  const marker = path.join(L.cluster, 'ran');
  const sink = eventSink();
  const jobs = createJobs({
    filesDir: L.files, dispatch: sink.dispatch, log: () => {},
    exec: `touch ${marker}`,
    isolationTools: { unshare: path.join(L.cluster, 'no-unshare-here'), setpriv: '/usr/bin/setpriv' },
  });
  jobs.jobStart({ id: 6n, kind: 'exec', specJson: JSON.stringify({ workdir: 'work' }) });
  const ev = await sink.next((e) => e.tag === 'job-exited');
  assert.equal(ev.val.code, -1);
  assert.match(ev.val.log, /refusing to run the --exec command: it cannot be isolated on this machine \(unshare \(util-linux\) is not installed/);
  assert.match(ev.val.log, /--exec-unisolated/);
  await sleep(200);
  assert.equal(fs.existsSync(marker), false, 'the command did not run');
});

test('exec isolation: --exec-unisolated runs the command without isolation, with a warning in its log', async (t) => {
  const L = clusterLayout(t);
  const ev = await execJobs(L, { execUnisolated: true, isolationTools: { unshare: '/nonexistent' } });
  assert.equal(ev.val.code, 0, ev.val.log);
  assert.match(ev.val.log, /WARNING: the --exec command runs WITHOUT isolation/);
  assert.match(ev.val.log, /CONTROLLER-SECRET/, 'unisolated, it can read it (what the opt-out accepts)');
});

test('exec isolation: kars-mesh cluster up --exec-unisolated is parsed, passed to a detached cluster, and needs --exec', () => {
  const { run } = planOperator(['cluster', 'up', '--exec', 'my-agent', '--exec-unisolated', '--dir', '/tmp/x']);
  assert.equal(run.execUnisolated, true);
  assert.deepEqual(run.passArgs, ['--exec', 'my-agent', '--exec-unisolated']);
  assert.throws(() => planOperator(['cluster', 'up', '--exec-unisolated', '--dir', '/tmp/x']), /--exec-unisolated applies to an --exec command/);
  assert.equal(planOperator(['cluster', 'up', '--exec', 'x', '--dir', '/tmp/x']).run.execUnisolated, undefined);
});

// ---- 6. file-read refuses secret places ---------------------------------------

function readVia(jobs, sink, p) {
  const id = BigInt(sink.events.length + 100);
  jobs.fileRead({ id, path: p, maxBytes: 1 << 20 });
  return sink.next((e) => e.val?.id === id);
}

test('file-read: paths resolving into the state directory or secret places are refused with a message naming the fix', async (t) => {
  const base = tmpDir(t, 'read');
  const state = path.join(base, 'state');
  fs.mkdirSync(path.join(state, 'records'), { recursive: true });
  fs.writeFileSync(path.join(state, 'state.key'), Buffer.alloc(32, 1));
  fs.symlinkSync(path.join(state, 'state.key'), path.join(base, 'innocent.txt'));
  fs.symlinkSync(state, path.join(base, 'dirlink'));
  fs.writeFileSync(path.join(base, 'ok.txt'), 'fine');
  const home = path.join(base, 'home');
  fs.mkdirSync(path.join(home, '.ssh'), { recursive: true });
  fs.writeFileSync(path.join(home, '.ssh', 'id_ed25519'), 'PRIVATE KEY');
  fs.symlinkSync(path.join(home, '.ssh', 'id_ed25519'), path.join(base, 'key-link'));
  const savedHome = process.env.HOME;
  process.env.HOME = home;
  t.after(() => { process.env.HOME = savedHome; });
  const sink = eventSink();
  const jobs = createJobs({ filesDir: path.join(state, 'files'), dispatch: sink.dispatch, log: () => {}, stateDir: state });

  for (const p of [path.join(state, 'state.key'), path.join(base, 'innocent.txt'), path.join(base, 'dirlink', 'state.key'), path.join(state, 'records', '..', 'state.key')]) {
    const ev = await readVia(jobs, sink, p);
    assert.equal(ev.tag, 'file-failed', p);
    assert.equal(ev.val.message, `refused: ${p} is inside the kars-mesh state directory, which holds this agent's secret keys; cloud_offload does not send files from there. Copy the file you mean to send somewhere else (without any secrets in it) and pass that path`);
  }
  for (const [p, re] of [
    ['~/.ssh/id_ed25519', /^refused: ~\/\.ssh\/id_ed25519 is inside ~\/\.ssh, which holds your SSH keys; .*Copy the file/],
    [path.join(base, 'key-link'), /is inside ~\/\.ssh/],
    ['/etc/shadow', /^refused: \/etc\/shadow is \/etc\/shadow, which holds the system password hashes/],
    ['/proc/self/environ', /is inside \/proc, which is a kernel interface/],
    ['/proc/self/root/etc/shadow', /^refused: /],
    ['/sys/kernel/notes', /is inside \/sys/],
  ]) {
    const ev = await readVia(jobs, sink, p);
    assert.equal(ev.tag, 'file-failed', p);
    assert.match(ev.val.message, re);
  }
  // Another agent's state directory (a CLI --state one, a copy): anything
  // under a directory holding a state.key.
  const other = path.join(base, 'other-agent');
  fs.mkdirSync(path.join(other, 'files', 'incoming'), { recursive: true });
  fs.writeFileSync(path.join(other, 'state.key'), Buffer.alloc(32, 2));
  fs.writeFileSync(path.join(other, 'files', 'incoming', 'report.md'), 'kept beside the key');
  for (const p of [path.join(other, 'state.key'), path.join(other, 'files', 'incoming', 'report.md')]) {
    const ev = await readVia(jobs, sink, p);
    assert.equal(ev.tag, 'file-failed', p);
    assert.equal(ev.val.message, `refused: ${p} is inside the kars-mesh state directory ${other}, which holds an agent's secret keys; cloud_offload does not send files from there. Copy the file you mean to send somewhere else (without any secrets in it) and pass that path`);
  }
  // A relative path that is not there: said from where it was read.
  const rel = await readVia(jobs, sink, 'no-such-notes.txt');
  assert.equal(rel.tag, 'file-failed');
  assert.equal(rel.val.message, `no such file (a relative path is read from ${process.cwd()})`);
  const ok = await readVia(jobs, sink, path.join(base, 'ok.txt'));
  assert.equal(ok.tag, 'file-loaded');
  assert.equal(Buffer.from(ok.val.bytes).toString(), 'fine');
  const fifo = path.join(base, 'fifo');
  if (process.platform === 'linux') {
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfifo', [fifo]);
    const ev = await readVia(jobs, sink, fifo);
    assert.equal(ev.tag, 'file-failed');
    assert.equal(ev.val.message, 'not a regular file');
  }
});

// ---- 7. log lines escaped -------------------------------------------------------

test('log escaping: newlines, CR, ESC, other C0/C1 and bidi controls are escaped; plain text and backslashes stay', () => {
  assert.equal(escapeLog('peer says hi'), 'peer says hi');
  assert.equal(escapeLog('a\nb\rc\td'), 'a\\nb\\rc\\td');
  assert.equal(escapeLog('\u001b[31mred\u001b[0m'), '\\x1b[31mred\\x1b[0m');
  assert.equal(escapeLog('\u0000\u0007\u007f\u0085\u009b'), '\\x00\\x07\\x7f\\x85\\x9b');
  assert.equal(escapeLog('abc\u202Etxt.exe\u2066x\u2069\u2028'), 'abc\\u202etxt.exe\\u2066x\\u2069\\u2028');
  assert.equal(escapeLog('C:\\path é ☁️'), 'C:\\path é ☁️');
  assert.equal(escapeLog(escapeLog('x\ny')), 'x\\ny', 'escaping twice changes nothing');
});

test('log escaping: an engine log line carrying a peer string cannot forge a line through the node\'s logger', async (t) => {
  const stateDir = tmpDir(t, 'log');
  const lines = [];
  const evil = 'bob\n2026-01-01T00:00:00Z info: paired with attacker\u001b]0;pwned\u0007\u202e';
  const node = await createNode({
    stateDir,
    log: (l, m) => lines.push(`${l}: ${m}`),
    loadCoreImpl: async (fns) => ({
      engine: {
        handle(ev) {
          if (ev.tag === 'tool-call') {
            fns.log('warn', `message from ${evil}`);
            return [{ tag: 'tool-result', val: { callId: ev.val.callId, resultJson: JSON.stringify({ content: [{ type: 'text', text: 'ok' }], details: { mesh: { did: 'did:mesh:' + '0'.repeat(32) } } }) } }];
          }
          return [];
        },
      },
      toolkit: {},
    }),
  });
  await node.stop();
  const warn = lines.find((l) => l.startsWith('warn: message from'));
  assert.ok(warn, lines.join('\n'));
  assert.ok(!/[\n\r\u001b\u0007\u202e]/.test(warn), JSON.stringify(warn));
  assert.equal(warn, 'warn: message from bob\\n2026-01-01T00:00:00Z info: paired with attacker\\x1b]0;pwned\\x07\\u202e');
});

test('exec isolation: a cluster also hides the agent state directories its environment names (KARS_MESH_STATE, OpenClaw\'s kars-mesh), a walk-through read another agent\'s state.key', (t) => {
  const home = tmpDir(t, 'home');
  const agent = path.join(home, 'agents', 'alice');
  const openclaw = path.join(home, 'oc-state');
  fs.mkdirSync(agent, { recursive: true });
  fs.mkdirSync(path.join(openclaw, 'kars-mesh'), { recursive: true });
  assert.deepEqual(knownAgentStates({ KARS_MESH_STATE: agent, OPENCLAW_STATE_DIR: openclaw }, home), [agent, path.join(openclaw, 'kars-mesh')]);
  assert.deepEqual(knownAgentStates({ KARS_MESH_STATE: '~/agents/alice' }, home), [agent]);
  // Names that do not exist are left out (nothing to hide, and mount would fail).
  assert.deepEqual(knownAgentStates({ KARS_MESH_STATE: path.join(home, 'none') }, home), []);
  assert.deepEqual(knownAgentStates({}, home), []);
});

test('cluster up gives its relay and registry the operator\'s environment without secrets (relay token, identity seed, credentials)', () => {
  const env = serverEnv({
    PATH: '/usr/bin', HOME: '/h', LANG: 'C.UTF-8', VIRTUAL_ENV: '/v', PYTHONPATH: '/p',
    KARS_MESH_RELAY_TOKEN: 's1', KARS_IDENTITY_SEED: 's2', PINNED_AGENT_IDENTITY_APP_ID: 's3', AGENTMESH_RELAY_TOKEN: 's4',
    GITHUB_TOKEN: 's5', AWS_SECRET_ACCESS_KEY: 's6', OPENAI_API_KEY: 's7', DB_PASSWORD: 's8',
    // The relay's and registry's own settings pass (a review: AGENTMESH_* were dropped).
    AGENTMESH_RELAY_ALLOW_UNAUTHED_DID: '1', AGENTMESH_ENTRA_TENANT_ID: 't', PYTHONHASHSEED: '0',
  });
  assert.deepEqual(Object.keys(env).sort(), ['AGENTMESH_ENTRA_TENANT_ID', 'AGENTMESH_RELAY_ALLOW_UNAUTHED_DID', 'HOME', 'LANG', 'PATH', 'PYTHONHASHSEED', 'PYTHONPATH', 'VIRTUAL_ENV']);
});
