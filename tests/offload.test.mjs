// Offload end to end through the real relay and registry: a controller node
// (engine role "controller") that starts real sandbox processes
// (js-host/sandbox-main.js, engine role "sandbox") running an `--exec`
// command, and a client node using the plugin's tools: pair, cloud_offload
// with two input files (one over 1 MiB), progress, an output over 512 KiB
// reassembled from chunks and hash-checked, done; cancel frees the slot; a
// controller restart mid-offload loses nothing; strangers get nowhere.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from './harness/servers.mjs';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { followOffload } from './harness/follow.mjs';
import { untilRegistered } from './harness/registered.mjs';
import { rawPeer } from './peers/raw_peer.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TASK_CMD = `"${process.execPath}" "${path.join(HERE, 'fixtures/offload-task.mjs')}"`;

let srv;
const dirs = [];
const nodes = new Set();
let sandboxDir;

before(async () => {
  srv = await startServers();
  sandboxDir = tmp('sandboxes');
});
after(async () => {
  for (const n of nodes) await n.stop().catch(() => {});
  await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(name) {
  const d = mkdtempSync(path.join(tmpdir(), `kars-offload-${name}-`));
  dirs.push(d);
  return d;
}

async function start(name, stateDir, extra = {}) {
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.add(n);
  return untilRegistered(n, name);
}

async function stop(n) {
  await n.stop();
  nodes.delete(n);
}

function controllerOpts(extra = {}) {
  return { role: 'controller', clusterName: 'test-lab', sandboxes: { dir: sandboxDir, exec: TASK_CMD, progressMs: 500 }, ...extra };
}

async function pair(ctrl, client, name, opts = {}) {
  const gen = await ctrl.callTool('pair_generate', { name, slots: 1, capabilities: 'offload', expires: '1d', ...opts });
  const r = await client.callTool('mesh_pair', { token: gen.details.mesh.token }, { timeoutMs: 40_000 });
  assert.match(r.content[0].text, /^✅ Paired successfully/, r.content[0].text);
  return gen.details.mesh.token;
}


/** Follow a client node's offload until it ends (or reaches `until`). */
const follow = (client, opts) => followOffload((a) => client.callTool('offload_status', a, { timeoutMs: 30_000 }), opts);

const sha = (b) => createHash('sha256').update(b).digest('hex');

test('full offload: two inputs (one over 1 MiB), progress, a 700 KiB output reassembled and checked, done', { timeout: 120_000 }, async () => {
  const ctrl = await start('ctrl-a', tmp('ctrl-a'), controllerOpts());
  const clientDir = tmp('alice');
  const alice = await start('alice', clientDir);
  await pair(ctrl, alice, 'alice');

  const work = tmp('work');
  const small = Buffer.from('hello sandbox\n');
  const big = randomBytes(1024 * 1024 + 12345);
  writeFileSync(path.join(work, 'notes.txt'), small);
  writeFileSync(path.join(work, 'data.bin'), big);

  const r = await alice.callTool('cloud_offload', {
    task: 'summarise the inputs',
    files: [path.join(work, 'notes.txt'), path.join(work, 'data.bin')],
    timeout_minutes: 5,
  });
  const text = r.content[0].text;
  assert.match(text, /^☁️ Offload submitted — orchestrating in background\nRequest ID: [0-9a-f-]{36}\n/, text);
  assert.match(text, /Files: 2 file\(s\) \(1036\.\d KB\) queued/);
  const rid = r.details.mesh.request_id;

  const { seen, last } = await follow(alice, { timeoutMs: 30_000 });
  assert.equal(last.phase, 'done', JSON.stringify(last));
  for (const p of ['submitted', 'validating', 'spawning', 'scheduled', 'ready', 'connecting', 'acknowledged', 'running', 'returning', 'done']) {
    assert.ok(seen.includes(p), `phase ${p} missing from ${seen.join(' ')}`);
  }
  // Chosen by the controller at random, never derived from the request id.
  assert.match(last.sandbox_name, /^offload-[0-9a-f]{16}$/);
  assert.ok(!last.sandbox_name.includes(rid.slice(0, 8)), last.sandbox_name);
  assert.match(last.summary, /processed 2 input\(s\) for: summarise the inputs/);

  // Outputs: in the private incoming directory, hash-checked.
  const byName = Object.fromEntries(last.outputs.map((o) => [o.name, o]));
  const expected = Buffer.alloc(700 * 1024);
  for (let i = 0; i < expected.length; i++) expected[i] = (i * 31 + 7) & 0xff;
  const resultPath = path.join(clientDir, 'files', byName['result.bin'].path);
  assert.equal(byName['result.bin'].path, `incoming/${rid.slice(0, 8)}/result.bin`);
  const got = readFileSync(resultPath);
  assert.equal(got.length, expected.length);
  assert.equal(sha(got), sha(expected));
  assert.equal(byName['result.bin'].sha256, sha(expected));
  // The sandbox saw exactly our inputs, byte for byte.
  const seenInputs = JSON.parse(readFileSync(path.join(clientDir, 'files', byName['inputs.json'].path), 'utf8'));
  assert.deepEqual(seenInputs.inputs, [
    { name: 'data.bin', size: big.length, sha256: sha(big) },
    { name: 'notes.txt', size: small.length, sha256: sha(small) },
  ]);

  // The hook's notifications carry the news once.
  const notes = await alice.callTool('offload_notifications', {});
  assert.ok(notes.details.mesh.lines.some((l) => l.includes('done')), notes.details.mesh.lines.join('\n'));
  assert.deepEqual((await alice.callTool('offload_notifications', {})).details.mesh.lines, []);

  // Reading the finished snapshot clears it; the slot is free again.
  const snap = await alice.callTool('offload_status', {});
  assert.match(snap.content[0].text, /^✅ Offload [0-9a-f]{8} — done/);
  assert.equal((await alice.callTool('offload_status', {})).content[0].text, 'No active offload. Use cloud_offload to start one.');
  await waitFor(async () => (await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used === 0, 'slot freed');
  // Nothing of the offload went to the inbox.
  assert.equal((await alice.callTool('mesh_inbox', {})).details.mesh.messages.length, 0);
  // A duplicate within 10 minutes is refused unless forced.
  const dup = await alice.callTool('cloud_offload', { task: '  Summarise   the inputs ' });
  assert.match(dup.content[0].text, /^⚠️ {2}This task was already offloaded \d+s ago — not starting a new sandbox\./);
});

async function waitFor(fn, what, ms = 20_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for: ${what}`);
}

test('cancel mid-run stops the sandbox and frees the slot', { timeout: 120_000 }, async () => {
  const ctrl = await start('ctrl-b', tmp('ctrl-b'), controllerOpts());
  const bob = await start('bob', tmp('bob'));
  await pair(ctrl, bob, 'bob');
  const r = await bob.callTool('cloud_offload', { task: 'sleep 60 then report' });
  assert.match(r.content[0].text, /^☁️ Offload submitted/);
  await follow(bob, { until: ['running'] });
  const list = await ctrl.callTool('offload_list', {});
  assert.equal(list.details.mesh.offloads.length, 1);
  const sandboxName = list.details.mesh.offloads[0].sandbox_name;
  const job = JSON.parse(readFileSync(path.join(sandboxDir, sandboxName, 'job.json'), 'utf8'));

  // Slots are enforced by the controller: a second request while the first runs is refused.
  const rid2 = '22222222-3333-4444-8555-666666666666';
  await bob.callTool('mesh_send', { to: ctrl.did, message: { type: 'offload_request', task: 'another', files: [], file_count: 0, total_bytes: 0, preferences: { timeout_minutes: 5 }, request_id: rid2 } });
  let refusal;
  for (let i = 0; i < 5 && !refusal; i++) {
    const got = await bob.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 20, mark_read: true });
    refusal = got.details.mesh.messages.map((m) => m.payload).find((p) => p.type === 'offload_error' && p.request_id === rid2);
  }
  assert.equal(refusal?.error, 'No free sandbox slot (1 of 1 in use). Cancel or finish a running offload first.');

  // A request id sharing a running offload's first 8 characters takes over
  // nothing: sandbox names are the controller's own random choice (red-team
  // finding 3), so it is refused only because the one slot is in use.
  const running = (await ctrl.callTool('offload_list', {})).details.mesh.offloads[0].request_id;
  const rid3 = `${running.slice(0, 8)}-0000-4000-8000-000000000000`;
  await bob.callTool('mesh_send', { to: ctrl.did, message: { type: 'offload_request', task: 'steal', files: [], file_count: 0, total_bytes: 0, preferences: { timeout_minutes: 5 }, request_id: rid3 } });
  let collision;
  for (let i = 0; i < 5 && !collision; i++) {
    const got = await bob.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 20, mark_read: true });
    collision = got.details.mesh.messages.map((m) => m.payload).find((p) => p.type === 'offload_error' && p.request_id === rid3);
  }
  assert.equal(collision?.error, 'No free sandbox slot (1 of 1 in use). Cancel or finish a running offload first.');
  assert.ok(isAlive(job.pid), 'the running sandbox was not touched');

  const connected = async () => (await (await fetch(`${srv.relayUrl}/health`)).json()).connected_agents;
  const withSandbox = await connected();
  // Something the sandbox answers at once, sent just before the cancel: its
  // answer (a file_transfer refused, the task runs already) comes after it.
  const sandboxDid = list.details.mesh.offloads[0].sandbox_did;
  await bob.callTool('mesh_send', { to: sandboxDid, message: { type: 'file_transfer', file_name: 'late.txt', file_data: Buffer.from('late\n').toString('base64') } });
  const c = await bob.callTool('offload_cancel', {});
  assert.match(c.content[0].text, /^🛑 Offload [0-9a-f]{8} cancelled\. Cleanup signal sent to the controller; the sandbox will be torn down shortly\.$/);
  const s = await bob.callTool('offload_status', {});
  assert.match(s.content[0].text, /Error: Cancelled by user via offload_cancel/);
  await waitFor(async () => (await ctrl.callTool('offload_list', {})).details.mesh.offloads.length === 0, 'controller dropped the offload');
  assert.equal((await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used, 0);
  await waitFor(() => !isAlive(job.pid), 'sandbox process gone');
  assert.equal((await bob.callTool('offload_cancel', {})).content[0].text, 'No active cloud offload to cancel.');
  // Whatever the sandbox still sent after the cancel is dropped, not inboxed.
  // Its last frame is behind us once the relay has dropped its connection
  // (it handles a connection's frames, then its `disconnect` or its end, in
  // order, forwarding each to Bob's connection at once); a sentinel sent to
  // Bob after that reaches him after all of them.
  await waitFor(async () => (await connected()) < withSandbox, `the relay dropped the sandbox's connection (${withSandbox} connected with it)`);
  const sentinel = await sentinelTo(bob);
  const inbox = (await bob.callTool('mesh_inbox', { unread_only: false, limit: 100 })).details.mesh.messages;
  assert.ok(inbox.some((m) => m.from === sentinel), 'the sentinel is in the inbox');
  assert.deepEqual(inbox.filter((m) => m.from === sandboxDid), []);
});

/** A message to `node` from a fresh raw peer, once it is in node's inbox; returns the peer's DID. */
async function sentinelTo(node) {
  const p = await rawPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  try {
    const s = await p.openSession(node.did);
    await p.encrypted(s, { type: 'message', content: 'sentinel' });
    await waitFor(async () => (await node.callTool('mesh_inbox', { from: p.did, unread_only: false })).details.mesh.messages.length > 0, 'the sentinel reached the inbox');
    return p.did;
  } finally {
    await p.close();
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('a controller restart mid-offload does not lose the result', { timeout: 120_000 }, async () => {
  const ctrlDir = tmp('ctrl-c');
  let ctrl = await start('ctrl-c', ctrlDir, controllerOpts());
  const carol = await start('carol', tmp('carol'));
  await pair(ctrl, carol, 'carol');
  await carol.callTool('cloud_offload', { task: 'sleep 3 then report' });
  await follow(carol, { until: ['running'] });
  await stop(ctrl);
  ctrl = await start('ctrl-c', ctrlDir, controllerOpts());
  const { last } = await follow(carol);
  assert.equal(last.phase, 'done', JSON.stringify(last));
  assert.ok(last.outputs.some((o) => o.name === 'result.bin'));
  // The cleanup reached the restarted controller: slot free, sandbox gone.
  await waitFor(async () => (await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used === 0, 'slot freed after restart');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);
});

test('strangers cannot pair with a used token, offload, clean up or feed a sandbox', { timeout: 120_000 }, async () => {
  const ctrl = await start('ctrl-d', tmp('ctrl-d'), controllerOpts());
  const dave = await start('dave', tmp('dave'));
  const eve = await start('eve', tmp('eve'));
  const token = await pair(ctrl, dave, 'dave');

  const reuse = await eve.callTool('mesh_pair', { token }, { timeoutMs: 40_000 });
  assert.equal(reuse.content[0].text, '❌ Pairing rejected by cluster: Pairing is Active — token already consumed or expired');
  const refused = await eve.callTool('cloud_offload', { task: 'x' });
  assert.equal(refused.content[0].text, '❌ Not paired with any kars cluster. Use mesh_pair first.');

  // Eve speaks the protocol directly: the controller refuses her.
  const rid = '11111111-2222-4333-8444-555555555555';
  await eve.callTool('mesh_send', { to: ctrl.did, message: { type: 'offload_request', task: 'mine now', files: [], file_count: 0, total_bytes: 0, preferences: { timeout_minutes: 5 }, request_id: rid } });
  const got = await eve.callTool('mesh_inbox', { wait_seconds: 20, from: ctrl.did });
  // The refusal is all a stranger hears: no phase news.
  assert.equal(got.details.mesh.messages.length, 1, JSON.stringify(got.details.mesh.messages));
  const errs = got.details.mesh.messages.map((m) => m.payload).filter((p) => p.type === 'offload_error');
  assert.equal(errs.length, 1, JSON.stringify(got.details.mesh.messages));
  assert.equal(errs[0].error, 'Not paired with this cluster. Pair first with mesh_pair.');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);

  // Dave offloads a slow task; Eve tries to clean it up and to feed the sandbox.
  await dave.callTool('cloud_offload', { task: 'sleep 10 then report' });
  await follow(dave, { until: ['running'] });
  const [o] = (await ctrl.callTool('offload_list', {})).details.mesh.offloads;
  await eve.callTool('mesh_send', { to: ctrl.did, message: { type: 'offload_cleanup', request_id: o.request_id, reason: 'cancelled' } });
  await eve.callTool('mesh_send', { to: o.sandbox_did, message: { type: 'file_transfer', file_name: 'evil.sh', file_data: Buffer.from('rm -rf /').toString('base64') } });
  // Eve's cleanup: a second request of hers, on the same session, is
  // refused; the controller had handled the cleanup before it.
  const rid4 = '11111111-2222-4333-8444-666666666666';
  await eve.callTool('mesh_send', { to: ctrl.did, message: { type: 'offload_request', task: 'after the cleanup', files: [], file_count: 0, total_bytes: 0, preferences: { timeout_minutes: 5 }, request_id: rid4 } });
  let after;
  await waitFor(async () => {
    const got2 = await eve.callTool('mesh_inbox', { from: ctrl.did, unread_only: false, limit: 50 });
    after = got2.details.mesh.messages.map((m) => m.payload).find((p) => p.request_id === rid4);
    return !!after;
  }, "the controller's answer to Eve's second request");
  assert.equal(after.error, 'Not paired with this cluster. Pair first with mesh_pair.');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 1, "Eve's cleanup ended Dave's offload");
  // The sandbox's own word that it refused Eve (her session, or her message
  // once in one; its log is in its directory while it runs: the task sleeps
  // 10 s), and at that moment its input directory, where the file would be
  // written, holds no evil.sh.
  const sbDir = path.join(sandboxDir, o.sandbox_name);
  const inDir = path.join(sbDir, 'state', 'files', 'work', 'in');
  const sbLog = () => {
    try {
      return readFileSync(path.join(sbDir, 'sandbox.log'), 'utf8');
    } catch {
      return '';
    }
  };
  const refusedEve = new RegExp(`rejected a session from ${eve.did} |dropped a message from ${eve.did}, which is not the requester`);
  await waitFor(() => refusedEve.test(sbLog()), "the sandbox's log line refusing Eve")
    .catch((e) => assert.fail(`${e.message}; the sandbox's log:\n${sbLog()}`));
  assert.ok(existsSync(inDir), `no input directory ${inDir} while the task runs`);
  assert.ok(!existsSync(path.join(inDir, 'evil.sh')), "Eve's file is in the sandbox's input directory");
  const { last } = await follow(dave);
  assert.equal(last.phase, 'done', 'a stranger cancelled the offload');
  const inputs = JSON.parse(readFileSync(path.join(dave.stateDir, 'files', last.outputs.find((x) => x.name === 'inputs.json').path), 'utf8'));
  assert.deepEqual(inputs.inputs, []);
});

test('the sandbox honours timeout_minutes: the command is stopped and the offload ends in an error', { timeout: 150_000 }, async () => {
  const ctrl = await start('ctrl-e', tmp('ctrl-e'), controllerOpts());
  const frank = await start('frank', tmp('frank'));
  await pair(ctrl, frank, 'frank');
  await frank.callTool('cloud_offload', { task: 'sleep 600 then report', timeout_minutes: 1 });
  const { last } = await follow(frank, { timeoutMs: 120_000 });
  assert.equal(last.phase, 'error');
  assert.equal(last.error, 'Sandbox error: timed out after 1 minute(s)');
  await waitFor(async () => (await ctrl.callTool('offload_list', {})).details.mesh.offloads.length === 0, 'slot freed after the timeout');
});

test('a client restart mid-offload: the result is still delivered and reported', { timeout: 120_000 }, async () => {
  const ctrl = await start('ctrl-f', tmp('ctrl-f'), controllerOpts());
  const gDir = tmp('grace');
  let grace = await start('grace', gDir);
  await pair(ctrl, grace, 'grace');
  const work = tmp('gwork');
  const input = randomBytes(600 * 1024);
  writeFileSync(path.join(work, 'in.bin'), input);
  await grace.callTool('cloud_offload', { task: 'sleep 3 then report', files: [path.join(work, 'in.bin')] });
  await follow(grace, { until: ['running'] });
  await stop(grace);
  grace = await start('grace', gDir);
  const { last } = await follow(grace);
  assert.equal(last.phase, 'done', JSON.stringify(last));
  const inputs = JSON.parse(readFileSync(path.join(gDir, 'files', last.outputs.find((x) => x.name === 'inputs.json').path), 'utf8'));
  assert.deepEqual(inputs.inputs, [{ name: 'in.bin', size: input.length, sha256: sha(input) }]);
});

test('an input changed while the client was down is refused after its restart, and nothing runs', { timeout: 120_000 }, async () => {
  // The controller is down, so no sandbox says hello before the client
  // stops: the restarted client reads the input again, and those bytes no
  // longer match what cloud_offload hashed. (Bytes kept from the
  // cloud_offload read itself are not hashed a second time.)
  const ctrlDir = tmp('ctrl-i');
  let ctrl = await start('ctrl-i', ctrlDir, controllerOpts());
  const iDir = tmp('ivy');
  let ivy = await start('ivy', iDir);
  await pair(ctrl, ivy, 'ivy');
  await stop(ctrl);
  const work = tmp('iwork');
  const file = path.join(work, 'in.bin');
  writeFileSync(file, randomBytes(700 * 1024));
  const sub = await ivy.callTool('cloud_offload', { task: 'report', files: [file] });
  assert.match(sub.content[0].text, /^☁️|^✅|Offload/, sub.content[0].text);
  await stop(ivy);
  writeFileSync(file, randomBytes(700 * 1024));
  ivy = await start('ivy', iDir);
  ctrl = await start('ctrl-i', ctrlDir, controllerOpts());
  const { last } = await follow(ivy);
  assert.equal(last.phase, 'error', JSON.stringify(last));
  assert.equal(last.error, `Input file ${file} changed since cloud_offload read it; offload it again.`);
  assert.ok(!last.events.some((e) => e.phase === 'running'), `nothing ran: ${JSON.stringify(last.events)}`);
  assert.deepEqual(last.outputs, []);
  // "offload it again" works as said: the same task, without force, is a new
  // offload (nothing ran, so the duplicate guard does not hold it back).
  const again = await ivy.callTool('cloud_offload', { task: 'report', files: [file] });
  assert.doesNotMatch(again.content[0].text, /already offloaded/, again.content[0].text);
  assert.notEqual(again.details.mesh.request_id, last.request_id, again.content[0].text);
  const second = await follow(ivy);
  assert.equal(second.last.phase, 'done', JSON.stringify(second.last));
});

test('cloud_offload bad input: the documented errors, and nothing starts', { timeout: 60_000 }, async () => {
  const ctrl = await start('ctrl-g', tmp('ctrl-g'), controllerOpts());
  const hank = await start('hank', tmp('hank'));
  await pair(ctrl, hank, 'hank');
  const work = tmp('hwork');
  const big = path.join(work, 'big.bin');
  writeFileSync(big, '');
  const { truncateSync } = await import('node:fs');
  truncateSync(big, 31 * 1024 * 1024);
  const text = async (args) => (await hank.callTool('cloud_offload', args)).content[0].text;
  for (const args of [{}, { task: 5 }, { task: '   ' }]) {
    const t = await text(args);
    assert.match(t, /^❌ cloud_offload requires a `task` parameter/);
    assert.match(t, /Aliases accepted: task, prompt, description, request, content, instruction, query\.$/);
  }
  assert.equal(await text({ task: 'x', files: 'a.txt' }), '❌ `files` must be an array of file paths (strings).');
  assert.equal(await text({ task: 'x', files: [1] }), '❌ `files` must be an array of file paths (strings).');
  assert.equal(await text({ task: 'x', files: Array.from({ length: 11 }, (_, i) => `f${i}`) }), '❌ At most 10 files per offload (11 given).');
  assert.equal(await text({ task: 'x', files: [path.join(work, 'nope.txt')] }), `❌ Cannot read file: ${path.join(work, 'nope.txt')} (no such file)`);
  const tooLarge = (f, n) => `❌ File too large: ${f} (${n} bytes; a file can be at most 31,454,208 bytes (30 MiB less 3 KiB), what fits in 80 chunks of 512 KiB once base64-encoded). Nothing was started: compress the file or split it into parts, then call cloud_offload again.`;
  assert.equal(await text({ task: 'x', files: [big] }), tooLarge(big, 31 * 1024 * 1024));
  // The original's limit, 30 MB, needs 81 chunks: such a file used to be
  // accepted and then silently never sent. One byte over the real limit is
  // refused before anything starts (the largest that fits goes through in
  // tests/offload.large.test.mjs).
  const over = path.join(work, 'over.bin');
  writeFileSync(over, '');
  truncateSync(over, 31_454_208 + 1);
  assert.equal(await text({ task: 'x', files: [over] }), tooLarge(over, 31_454_209));
  const mib30 = path.join(work, 'mib30.bin');
  writeFileSync(mib30, '');
  truncateSync(mib30, 30 * 1024 * 1024 - 1);
  assert.equal(await text({ task: 'x', files: [mib30] }), tooLarge(mib30, 30 * 1024 * 1024 - 1));
  assert.equal(await text({ task: 'x', files: [work] }), `❌ Cannot read file: ${work} (not a regular file)`);
  for (const timeout_minutes of [0, -1, 'abc', 100000]) {
    assert.equal(await text({ task: 'x', timeout_minutes }), '❌ timeout_minutes must be a number from 1 to 1440.');
  }
  assert.equal(await text({ task: 'x', model: 7 }), '❌ model must be a string naming an inference model.');
  // Nothing started, nothing reached the controller.
  assert.equal((await hank.callTool('offload_status', {})).content[0].text, 'No active offload. Use cloud_offload to start one.');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);
  assert.equal((await hank.callTool('offload_cancel', {})).content[0].text, 'No active cloud offload to cancel.');
});

test('hostile output names: nothing escapes the incoming directory, links are not followed, the client keeps running', { timeout: 90_000 }, async () => {
  const ctrl = await start('ctrl-h', tmp('ctrl-h'), controllerOpts());
  const iDir = tmp('ivy');
  const ivy = await start('ivy', iDir);
  await pair(ctrl, ivy, 'ivy');
  await ivy.callTool('cloud_offload', { task: 'hostile outputs then report' });
  const { last } = await follow(ivy);
  assert.equal(last.phase, 'done', JSON.stringify(last));
  const names = last.outputs.map((o) => o.name);
  assert.ok(!names.includes('link'), `a symlink was followed: ${names}`);
  assert.ok(!names.some((n) => n === '.' || n === '..' || n.startsWith('.')), names.join(','));
  const long = names.find((n) => n.startsWith('日'));
  assert.ok(long && Buffer.byteLength(long) <= 200, long);
  for (const o of last.outputs) assert.ok(o.path.startsWith(`incoming/${last.request_id.slice(0, 8)}/`) && !o.path.includes('..'), o.path);
  assert.ok(readFileSync(path.join(iDir, 'files', last.outputs.find((o) => o.name.startsWith('日')).path), 'utf8') === 'long');
  assert.equal((await ivy.callTool('mesh_identity', {})).details.mesh.did, ivy.did, 'the client is still running');
  // A new offload while the finished one was never shown: its news stays for
  // the hook, and the new one's input still reaches its sandbox.
  const work = tmp('iwork');
  writeFileSync(path.join(work, 'again.txt'), 'again');
  await ivy.callTool('cloud_offload', { task: 'second run', files: [path.join(work, 'again.txt')] });
  const second = await follow(ivy);
  assert.equal(second.last.phase, 'done', JSON.stringify(second.last));
  const seen = JSON.parse(readFileSync(path.join(iDir, 'files', second.last.outputs.find((o) => o.name === 'inputs.json').path), 'utf8'));
  assert.deepEqual(seen.inputs.map((i) => i.name), ['again.txt']);
  const news = (await ivy.callTool('offload_notifications', {})).details.mesh.lines;
  assert.ok(news.some((l) => l.includes(last.request_id.slice(0, 8)) && l.includes('done')), news.join('\n'));
});

test('paired again after a revoke: the new pairing counts; a sandbox that dies is reported', { timeout: 90_000 }, async () => {
  const ctrl = await start('ctrl-i', tmp('ctrl-i'), controllerOpts());
  const jo = await start('jo', tmp('jo'));
  await pair(ctrl, jo, 'jo-old');
  await ctrl.callTool('pair_revoke', { name: 'jo-old' });
  await pair(ctrl, jo, 'jo-new');
  await jo.callTool('cloud_offload', { task: 'sleep 30 then report' });
  await follow(jo, { until: ['running'] });
  const [o] = (await ctrl.callTool('offload_list', {})).details.mesh.offloads;
  const job = JSON.parse(readFileSync(path.join(sandboxDir, o.sandbox_name, 'job.json'), 'utf8'));
  process.kill(-job.pid, 'SIGKILL');
  const { last } = await follow(jo, { timeoutMs: 30_000 });
  assert.equal(last.phase, 'error');
  assert.match(last.error, /^The cluster ended the offload: the sandbox offload-[0-9a-f]{16} stopped \(exit code -1\) before the offload was cleaned up$/);
  const pairings = (await ctrl.callTool('pair_list', {})).details.mesh.pairings;
  assert.deepEqual(pairings.map((p) => [p.name, p.phase, p.slots_used]), [['jo-old', 'Revoked', 0], ['jo-new', 'Active', 0]]);
});
