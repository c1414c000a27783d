// Host hardening through the real relay and registry: cloud_offload refuses
// to send the node's own state.key; a sandbox's --exec command cannot read
// the controller's keys, other sandboxes or its own state.key, still reads its
// inputs and writes outputs; the sandbox's directory is gone afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { followOffload } from './harness/follow.mjs';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { untilRegistered } from './harness/registered.mjs';
import { isolationMissing, skipTestUnlessCi } from './harness/prereq.mjs';

let srv;
let sandboxDir;
const dirs = [];
const nodes = new Set();

before(async () => {
  srv = await startServers();
  sandboxDir = tmp('sandboxes');
});
after(async () => {
  for (const n of nodes) await n.stop().catch(() => {});
  await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tmp(name) {
  const d = fs.mkdtempSync(path.join(tmpdir(), `kars-hardening-off-${name}-`));
  dirs.push(d);
  return d;
}

async function start(name, stateDir, extra = {}) {
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.add(n);
  return untilRegistered(n, name);
}

async function pair(ctrl, client, name) {
  const gen = await ctrl.callTool('pair_generate', { name, slots: 1, capabilities: 'offload', expires: '1d' });
  const r = await client.callTool('mesh_pair', { token: gen.details.mesh.token }, { timeoutMs: 40_000 });
  assert.match(r.content[0].text, /^✅ Paired successfully/, r.content[0].text);
}

async function waitFor(fn, what, ms = 20_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('cloud_offload of the node\'s own state.key (or a link to it) is refused with a message naming the problem and the fix', { timeout: 90_000 }, async () => {
  const ctrlDir = tmp('ctrl-r');
  const ctrl = await start('ctrl-r', ctrlDir, { role: 'controller', clusterName: 'lab', sandboxes: { dir: sandboxDir } });
  const aliceDir = tmp('alice');
  const alice = await start('alice', aliceDir);
  await pair(ctrl, alice, 'alice');
  const link = path.join(tmp('links'), 'notes.txt');
  fs.symlinkSync(path.join(aliceDir, 'state.key'), link);
  for (const p of [path.join(aliceDir, 'state.key'), link]) {
    const r = await alice.callTool('cloud_offload', { task: `send ${p}`, files: [p] });
    const text = r.content[0].text;
    assert.match(text, /^❌/, text);
    assert.ok(text.includes(`refused: ${p} is inside the kars-mesh state directory, which holds this agent's secret keys`), text);
    assert.match(text, /Copy the file you mean to send somewhere else/);
  }
  // Nothing was started for it.
  assert.deepEqual((await ctrl.callTool('offload_list', {})).details.mesh.offloads, []);
});

test('a sandbox\'s --exec command cannot read the controller\'s state.key, other sandboxes or its own state.key; the sandbox directory is erased afterwards', { timeout: 120_000 }, async (t) => {
  if (skipTestUnlessCi(t, isolationMissing())) return;
  const ctrlDir = tmp('ctrl-x');
  const probe = [
    `echo "ctrl: $(base64 -w0 < ${ctrlDir}/state.key 2>&1)"`,
    `echo "others: $(ls ${sandboxDir} 2>&1)"`,
    `echo "planted: $(cat ${sandboxDir}/offload-planted0000000/secret.txt 2>&1)"`,
    'echo "own: $(base64 -w0 < "$KARS_INPUT_DIR/../../../state.key" 2>&1)"',
    `echo "umount: $(umount ${sandboxDir} 2>&1; cat ${ctrlDir}/state.key 2>&1 | base64 -w0)"`,
  ].join('; ');
  const cmd = `{ ${probe}; } > "$KARS_OUTPUT_DIR/probe.txt"; tr a-z A-Z < "$KARS_INPUT_DIR/in.txt" > "$KARS_OUTPUT_DIR/upper.txt"`;
  const ctrl = await start('ctrl-x', ctrlDir, { role: 'controller', clusterName: 'lab', sandboxes: { dir: sandboxDir, exec: cmd, progressMs: 500 } });
  // Another sandbox's directory, as if one were running now.
  fs.mkdirSync(path.join(sandboxDir, 'offload-planted0000000'), { mode: 0o700 });
  fs.writeFileSync(path.join(sandboxDir, 'offload-planted0000000', 'secret.txt'), 'PLANTED-SECRET');
  const bobDir = tmp('bob');
  const bob = await start('bob', bobDir);
  await pair(ctrl, bob, 'bob');
  const work = tmp('work');
  fs.writeFileSync(path.join(work, 'in.txt'), 'hello input');
  const r = await bob.callTool('cloud_offload', { task: 'probe the sandbox', files: [path.join(work, 'in.txt')], timeout_minutes: 2 });
  assert.doesNotMatch(r.content[0].text, /^❌/, r.content[0].text);
  const { last } = await followOffload((a) => bob.callTool('offload_status', a, { timeoutMs: 30_000 }), { timeoutMs: 60_000 });
  assert.equal(last.phase, 'done', JSON.stringify(last));
  const out = Object.fromEntries(last.outputs.map((o) => [o.name, fs.readFileSync(path.join(bobDir, 'files', o.path), 'utf8')]));
  assert.equal(out['upper.txt'], 'HELLO INPUT', 'inputs readable, outputs writable');
  const report = out['probe.txt'];
  const ctrlKey = fs.readFileSync(path.join(ctrlDir, 'state.key')).toString('base64');
  assert.ok(!report.includes(ctrlKey), `the controller's state.key leaked:\n${report}`);
  assert.ok(!report.includes('PLANTED-SECRET'), report);
  // Hidden: the redirections fail (their errors go to the log, not the report).
  assert.match(report, /^ctrl: $/m, report);
  assert.match(report, /^own: $/m, report);
  assert.match(report, /^planted: cat: .*No such file or directory$/m, report);
  // Under the hidden sandboxes directory only the way to its own work directory exists.
  assert.match(report, new RegExp(`^others: ${last.sandbox_name}$`, 'm'), report);
  assert.match(report, /^umount: umount: .*must be superuser/m, report);

  // The sandbox ended (cleanup after done): its directory is erased, the planted one is not ours to touch while "live".
  const name = last.sandbox_name;
  await waitFor(() => !fs.existsSync(path.join(sandboxDir, name)), `the directory of ${name} to be erased`);
});
