// A REAL OpenClaw Gateway (openclaw 2026.9.6, Node 24) restarted in the
// middle of an offload, against the REAL AgentMesh relay and registry, a
// controller node that starts real sandbox processes running
// tests/fixtures/offload-task.mjs, and a peer node "bob":
//   - before: pair, a session with bob both ways, two messages from bob (one
//     marked read), an offload with a slow task ('sleep 5 then report') and an
//     input file, followed through /tools/invoke until it runs;
//   - the Gateway is stopped (SIGTERM, waited for) and started again on the
//     same config and state directory;
//   - after: offload_status through /tools/invoke follows the offload to done
//     with its output files; mesh_inbox shows the messages received before the
//     restart with their read marks; mesh_send to bob uses the existing session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from './harness/servers.mjs';
import { followOffload } from './harness/follow.mjs';
import { makeOpenClawHome } from './harness/openclaw.mjs';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { untilRegistered } from './harness/registered.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TASK_CMD = `"${process.execPath}" "${path.join(HERE, 'fixtures/offload-task.mjs')}"`;
const STARTED = /kars-mesh: mesh node started \((did:mesh:[0-9a-f]{32})\)/;

let srv;
let oc;
let gw;
let sandboxDir;
const dirs = [];
const nodes = [];

function tmp(name) {
  const d = mkdtempSync(path.join(tmpdir(), `kars-ocrst-${name}-`));
  dirs.push(d);
  return d;
}

async function node(name, extra = {}) {
  const n = await createNode({ stateDir: tmp(name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.push(n);
  return untilRegistered(n, name);
}

before(async () => {
  srv = await startServers();
  sandboxDir = tmp('sandboxes');
});
after(async () => {
  await gw?.stop();
  for (const n of nodes) await n.stop().catch(() => {});
  if (sandboxDir) await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  oc?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function invoke(tool, args, ms = 30_000) {
  const r = await gw.invoke(tool, args, ms);
  assert.equal(r.status, 200, `${tool}: HTTP ${r.status} ${r.text.slice(0, 1000)}\n${gw.logs().slice(-3000)}`);
  assert.equal(r.json?.ok, true, r.text.slice(0, 1000));
  const result = r.json.result;
  assert.ok(Array.isArray(result?.content) && result.content[0]?.type === 'text', r.text.slice(0, 1000));
  return result;
}
const text = (result) => result.content[0].text;

async function waitFor(fn, what, ms = 20_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for: ${what}`);
}


/** Follow the offload through the Gateway. */
const follow = (opts) => followOffload((a) => invoke('offload_status', a, 40_000), opts);

const sha = (b) => createHash('sha256').update(b).digest('hex');

test('Gateway restart mid-offload: the result arrives with its files, the inbox keeps its read marks, the session with a peer is reused', { timeout: 170_000 }, async () => {
  const [ctrl, bob] = await Promise.all([
    node('controller', { role: 'controller', clusterName: 'local-lab', sandboxes: { dir: sandboxDir, exec: TASK_CMD, progressMs: 500 } }),
    node('bob'),
  ]);
  oc = makeOpenClawHome({
    pluginConfig: (base) => ({
      relay_url: srv.relayUrl,
      registry_url: srv.registryUrl,
      state_dir: path.join(base, 'mesh-state'),
      display_name: 'claw',
      timeouts: { start_seconds: 30, tool_seconds: 90 },
    }),
  });
  const meshDir = path.join(oc.base, 'mesh-state');
  gw = await oc.startGateway();
  assert.ok(await gw.waitForLog(STARTED, 60_000), `the node did not start:\n${gw.logs().slice(-4000)}`);
  const clawDid = STARTED.exec(gw.logs())[1];

  // ---- before the restart ------------------------------------------------
  const gen = await ctrl.callTool('pair_generate', { name: 'claw', slots: 1, capabilities: 'offload', expires: '1d' });
  const paired = await invoke('mesh_pair', { token: gen.details.mesh.token }, 60_000);
  assert.match(text(paired), /^✅ Paired successfully with kars cluster "local-lab"/, text(paired));

  const first = await invoke('mesh_send', { to: 'bob', message: 'hello bob (before the restart)' }, 60_000);
  assert.doesNotMatch(text(first), /^❌/, text(first));
  assert.equal(first.details.mesh.session, 'new');
  const got1 = await bob.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 30, mark_read: true }, { timeoutMs: 40_000 });
  assert.deepEqual(got1.details.mesh.messages.map((m) => [m.from, m.evidence, m.payload.content]), [[clawDid, 'encrypted', 'hello bob (before the restart)']]);

  for (const m of ['bob 1 (will be read)', 'bob 2 (stays unread)']) {
    const r = await bob.callTool('mesh_send', { to: clawDid, message: m }, { timeoutMs: 40_000 });
    assert.doesNotMatch(r.content[0].text, /^❌/, r.content[0].text);
  }
  let inbox;
  await waitFor(async () => {
    inbox = await invoke('mesh_inbox', { block_until_message: true, timeout_seconds: 10 }, 20_000);
    return inbox.details.mesh.unread === 2;
  }, 'two messages from bob');
  const [m1, m2] = inbox.details.mesh.messages;
  assert.deepEqual([m1.payload.content, m2.payload.content], ['bob 1 (will be read)', 'bob 2 (stays unread)']);
  const marked = await invoke('mesh_inbox', { ids: [m1.id], mark_read: true });
  assert.deepEqual(marked.details.mesh.marked_read, [m1.id]);

  const work = tmp('work');
  const input = Buffer.from('numbers to crunch: 4, 5, 6\n');
  writeFileSync(path.join(work, 'numbers.txt'), input);
  const started = await invoke('cloud_offload', { task: 'sleep 5 then report', files: [path.join(work, 'numbers.txt')], timeout_minutes: 5 });
  assert.match(text(started), /^☁️ Offload submitted/, text(started));
  const rid = started.details.mesh.request_id;
  const early = await follow({ until: ['running'] });
  assert.equal(early.last.phase, 'running');

  // ---- stop the Gateway (SIGTERM, wait for its exit) and start it again ---
  await gw.stop();
  const exit = await gw.exited;
  assert.ok(!existsSync(path.join(meshDir, 'lock')), `the node's lock was not released on Gateway stop (${JSON.stringify(exit)})`);
  gw = await oc.startGateway();
  assert.ok(await gw.waitForLog(STARTED, 60_000), `the node did not start again:\n${gw.logs().slice(-4000)}`);
  assert.equal(STARTED.exec(gw.logs())[1], clawDid, 'same identity after the restart');

  // ---- after: the offload ends with its result --------------------------
  const { seen, last, text: doneText } = await follow({ timeoutMs: 60_000 });
  assert.equal(last.phase, 'done', JSON.stringify(last));
  assert.equal(last.request_id, rid);
  for (const ph of ['submitted', 'running', 'done']) assert.ok(seen.includes(ph), `phase ${ph} missing from ${seen.join(' ')}`);
  assert.match(last.summary, /processed 1 input\(s\) for: sleep 5 then report/);
  assert.ok(doneText.startsWith(`✅ Offload ${rid.slice(0, 8)} — done`), doneText);
  const byName = Object.fromEntries(last.outputs.map((o) => [o.name, o]));
  assert.deepEqual(Object.keys(byName).sort(), ['inputs.json', 'result.bin']);
  for (const o of last.outputs) {
    assert.equal(o.path, `incoming/${rid.slice(0, 8)}/${o.name}`);
    assert.equal(sha(readFileSync(path.join(meshDir, 'files', o.path))), o.sha256);
  }
  const report = JSON.parse(readFileSync(path.join(meshDir, 'files', byName['inputs.json'].path), 'utf8'));
  assert.deepEqual(report.inputs, [{ name: 'numbers.txt', size: input.length, sha256: sha(input) }]);
  await waitFor(async () => (await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used === 0, 'slot freed');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);

  // ---- after: the inbox kept its messages and read marks ------------------
  const unread = await invoke('mesh_inbox', {});
  assert.deepEqual(unread.details.mesh.messages.map((m) => [m.id, m.payload.content, m.read]), [[m2.id, 'bob 2 (stays unread)', false]]);
  const all = await invoke('mesh_inbox', { unread_only: false });
  const byId = Object.fromEntries(all.details.mesh.messages.map((m) => [m.id, m]));
  assert.equal(all.details.mesh.total, 2, text(all));
  assert.deepEqual([byId[m1.id]?.read, byId[m2.id]?.read], [true, false]);
  assert.deepEqual([byId[m1.id].from, byId[m1.id].evidence], [bob.did, 'encrypted']);

  // ---- after: mesh_send to bob over the existing session ------------------
  const again = await invoke('mesh_send', { to: 'bob', message: 'hello again (after the restart)' }, 60_000);
  assert.doesNotMatch(text(again), /^❌/, text(again));
  assert.equal(again.details.mesh.session, 'existing', JSON.stringify(again.details));
  assert.equal(again.details.mesh.to, bob.did);
  const got2 = await bob.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 30 }, { timeoutMs: 40_000 });
  assert.deepEqual(got2.details.mesh.messages.map((m) => [m.from, m.evidence, m.payload.content]), [[clawDid, 'encrypted', 'hello again (after the restart)']]);
});
