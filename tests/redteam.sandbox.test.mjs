// Red-team regressions, finding 3 (sandbox directories and what --exec can
// read), through a REAL local cluster (`kars-mesh cluster up` with `--exec`:
// the real relay and registry, the controller, sandbox processes).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { allFiles, startRedteamCluster, waitFor } from './harness/redteam-cluster.mjs';

let c;

before(async () => {
  c = await startRedteamCluster({
    name: 'sandbox',
    // "snoop": record what the task can see of its inputs, outside the sandbox.
    // "leak": try to return the controller's state key (as a file and in the summary).
    execScript: ({ work, dir }) => `#!/bin/sh
case "$KARS_TASK" in
  *snoop*) { ls -la "$KARS_INPUT_DIR"; cat "$KARS_INPUT_DIR"/*; } > "${work}/snoop-$KARS_REQUEST_ID.txt" 2>&1 ;;
  *leak*)
    cat "${dir}/controller/state.key" > "$KARS_OUTPUT_DIR/leak" 2>/dev/null
    base64 < "${dir}/controller/state.key" > "$KARS_OUTPUT_DIR/leak.b64" 2>/dev/null
    od -An -tx1 "${dir}/controller/state.key" 2>/dev/null | tr -d ' \\n'; echo ;;
esac
sleep 1
echo "task: $KARS_TASK" > "$KARS_OUTPUT_DIR/out.txt"
echo "finished: $KARS_TASK"
`,
  });
});
after(async () => {
  await c?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function filesHolding(dir, needle) {
  return allFiles(dir).filter((f) => {
    try {
      return fs.readFileSync(f).includes(needle);
    } catch {
      return false;
    }
  });
}

/** Wait for a controller message about `rid` in `node`'s inbox (an offload not started by cloud_offload lands there). */
async function controllerNews(node, rid, pred, ms = 20_000) {
  let found;
  await waitFor(async () => {
    const msgs = (await node.callTool('mesh_inbox', { from: c.controllerDid, unread_only: false, limit: 100 })).details.mesh.messages;
    found = msgs.map((m) => m.payload).find((p) => p?.request_id === rid && pred(p));
    return !!found;
  }, `controller news for ${rid}`, ms, 250);
  return found;
}

test('finding 3: sandbox directories are erased when an offload ends, a new offload gets a fresh random sandbox name, and never sees an earlier user\'s input', { timeout: 90_000 }, async () => {
  const bob = await c.client('bob');
  const eve = await c.client('eve');
  await c.pair(bob, 'bob');
  await c.pair(eve, 'eve');

  const secret = `BOB-SECRET-${randomBytes(16).toString('hex')}`;
  const input = path.join(c.work, 'bob-notes.txt');
  fs.writeFileSync(input, `${secret}\n`);
  const r = await bob.callTool('cloud_offload', { task: 'summarise my notes', files: [input] });
  const bobRid = r.details.mesh.request_id;
  assert.ok(bobRid, r.content[0].text);
  const { last } = await c.follow(bob);
  assert.equal(last.phase, 'done', JSON.stringify(last));

  // Once the offload has ended (the controller has freed the slot), nothing
  // of Bob's input is left under the sandboxes directory.
  await waitFor(async () => (await c.slotsUsed('bob')) === 0, "Bob's slot freed", 15_000, 250);
  let left = [];
  try {
    await waitFor(() => (left = filesHolding(c.sandboxesDir, secret)).length === 0, 'sandbox directories erased', 10_000, 250);
  } catch {
    assert.fail(`Bob's input is still on disk after his offload ended: ${left.map((f) => path.relative(c.dir, f)).join(', ')}`);
  }

  // Eve crafts a request id sharing the first 8 hex characters of Bob's.
  const rid = `${bobRid.slice(0, 8)}-${randomUUID().slice(9)}`;
  const task = 'snoop on the inputs';
  await eve.callTool('mesh_send', {
    to: c.controllerDid,
    message: { type: 'offload_request', task, files: [], file_count: 0, total_bytes: 0, preferences: { timeout_minutes: 5 }, request_id: rid, timestamp: new Date().toISOString() },
  });
  const news = await controllerNews(eve, rid, (p) => p.type === 'offload_error' || (p.type === 'offload_status' && p.phase === 'ready'));
  assert.equal(news.type, 'offload_status', `Eve's offload was refused: ${JSON.stringify(news)}`);
  assert.match(news.sandbox_name, /^offload-[0-9a-f]{16}$/, `Eve's sandbox name is not controller-chosen random: ${news.sandbox_name}`);
  assert.notEqual(news.sandbox_name, `offload-${bobRid.slice(0, 8)}`);

  // The go-ahead the client sends its sandbox (a sandbox runs nothing before
  // its requester's offload_start names the task's SHA-256).
  assert.match(news.sandbox_did ?? '', /^did:mesh:[0-9a-f]{32}$/, JSON.stringify(news));
  await eve.callTool('mesh_send', { to: news.sandbox_did, message: { type: 'offload_start', request_id: rid, task_sha256: createHash('sha256').update(task).digest('hex') } });

  // Her task ran and saw none of Bob's input.
  const snoop = path.join(c.work, `snoop-${rid}.txt`);
  await waitFor(() => fs.existsSync(snoop), "Eve's task ran", 15_000, 250);
  await sleep(300);
  const seen = fs.readFileSync(snoop, 'utf8');
  assert.ok(!seen.includes(secret) && !seen.includes('bob-notes'), `Eve's task saw Bob's input:\n${seen}`);
  await eve.callTool('mesh_send', { to: c.controllerDid, message: { type: 'offload_cleanup', request_id: rid, reason: 'done', timestamp: new Date().toISOString() } });
});

test('finding 3: the operator\'s --exec command cannot return the controller\'s state.key', { timeout: 60_000 }, async () => {
  const key = fs.readFileSync(path.join(c.controllerDir, 'state.key'));
  assert.equal(key.length, 32);
  const forms = [key, Buffer.from(key.toString('base64')), Buffer.from(key.toString('hex'))];
  const holds = (b) => forms.some((f) => b.includes(f));

  const mel = await c.client('mel');
  await c.pair(mel, 'mel');
  const r = await mel.callTool('cloud_offload', { task: 'leak the controller key' });
  assert.ok(r.details.mesh.request_id, r.content[0].text);
  const { last } = await c.follow(mel);
  // "Nothing leaked" means something only if the script really ran in its
  // sandbox: an offload refused (isolation not set up) or a crashed sandbox
  // returns nothing either. So: done, the script's own output came back, and
  // the leak attempt's outputs came back empty.
  assert.equal(last.phase, 'done', `the --exec script did not run to the end: ${JSON.stringify(last)}`);
  assert.match(last.summary ?? '', /^finished: leak the controller key$/m, `the script's stdout is not the summary: ${last.summary}`);
  const got = Object.fromEntries(last.outputs.map((o) => [o.name, fs.readFileSync(path.join(mel.stateDir, 'files', o.path))]));
  assert.equal(got['out.txt']?.toString(), 'task: leak the controller key\n', `out.txt, the script's last write, did not come back: ${JSON.stringify(last.outputs)}`);
  // `cat state.key > leak` makes the file before cat fails: its presence shows the leak line ran.
  assert.ok('leak' in got, `the leak attempt left no output, so it did not run: ${JSON.stringify(last.outputs)}`);
  for (const [name, bytes] of Object.entries(got)) {
    if (name.startsWith('leak')) assert.equal(bytes.length, 0, `${name} came back with ${bytes.length} bytes: the command could read state.key`);
  }
  assert.ok(!holds(Buffer.from(JSON.stringify(last))), `the offload's status/summary carries the controller's state key: ${last.summary ?? last.error}`);
  const leaked = allFiles(path.join(mel.stateDir, 'files')).filter((f) => holds(fs.readFileSync(f)));
  assert.deepEqual(leaked.map((f) => path.relative(mel.stateDir, f)), [], "the controller's state.key came back to the client");
});
