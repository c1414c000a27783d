// Red-team regressions, findings 2, 5 and 8b (offload control), through a
// REAL local cluster (`kars-mesh cluster up` with `--exec`: the real relay and
// registry, the controller, sandbox processes). Attackers are raw AgentMesh
// clients (tests/peers/raw_peer.mjs) connected as their own identities; the
// core-5.0.0 relay forwards whatever `from` they write.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startRedteamCluster, waitFor } from './harness/redteam-cluster.mjs';
import { alive } from './harness/cluster.mjs';
import { rawPeer, rawToolkit } from './peers/raw_peer.mjs';

let c;
const peers = new Set();
let marker;

before(async () => {
  c = await startRedteamCluster({
    name: 'offload',
    // PWNED tasks would write the marker; "slow" tasks take a few seconds.
    execScript: ({ work }) => `#!/bin/sh
case "$KARS_TASK" in
  *PWNED*) echo "ran $KARS_REQUEST_ID" >> "${work}/marker" ;;
  *slow*) sleep 8 ;;
  # (not instant: a task that ends before the controller's "ready" reaches
  # the client trips an unrelated race, reported separately)
  *) sleep 1 ;;
esac
echo "task: $KARS_TASK" > "$KARS_OUTPUT_DIR/out.txt"
echo "finished: $KARS_TASK"
`,
  });
  marker = path.join(c.work, 'marker');
});
after(async () => {
  for (const p of peers) await p.close().catch(() => {});
  await c?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function attacker() {
  const p = await rawPeer({ relayUrl: c.relayUrl, registryUrl: c.registryUrl });
  peers.add(p);
  return p;
}

/**
 * Send `p`'s own encrypted offload_request (session `s` with the controller)
 * and wait for the controller's refusal: the relay forwards a connection's
 * frames in order and the controller handles them in order, so everything
 * `p` sent before has been handled once it comes.
 */
async function handledUpTo(p, s) {
  const tk = await rawToolkit();
  const rid = randomUUID();
  const before = p.frames.length;
  await p.encrypted(s, offloadRequest('sentinel', rid));
  const answers = [];
  let read = before;
  await waitFor(() => {
    for (; read < p.frames.length; read++) {
      const f = p.frames[read];
      if (f.type !== 'message' || f.from !== c.controllerDid) continue;
      try {
        answers.push(JSON.parse(Buffer.from(tk.sessionDecryptFrame(s, JSON.stringify(f))).toString('utf8')));
      } catch (e) {
        answers.push({ undecryptable: String(e?.message ?? e) });
      }
    }
    return answers.some((a) => a.request_id === rid);
  }, `the controller's answer to the sentinel ${rid}`);
  const refusal = answers.find((a) => a.request_id === rid);
  assert.equal(refusal.error, 'Not paired with this cluster. Pair first with mesh_pair.', JSON.stringify(answers));
}

function offloadRequest(task, requestId = randomUUID()) {
  return {
    type: 'offload_request', task, files: [], file_count: 0, total_bytes: 0,
    preferences: { timeout_minutes: 5 }, request_id: requestId, timestamp: new Date().toISOString(),
  };
}

test('finding 2: a plaintext offload_request claiming a paired DID starts nothing, and a plaintext offload_cleanup claiming it does not end its offload', { timeout: 90_000 }, async () => {
  const dave = await c.client('dave');
  await c.pair(dave, 'dave');
  const mallory = await attacker(); // unpaired, its own identity
  const sandboxesBefore = c.sandboxNames();

  // The original plugin's dialect (`payload`), then the TS SDK's (`ciphertext` + plaintext:true).
  await mallory.plaintext(c.controllerDid, offloadRequest('PWNED: write the marker'), { from: dave.did, dialect: 'payload' });
  await mallory.plaintext(c.controllerDid, offloadRequest('PWNED: write the marker (ts dialect)'), { from: dave.did, dialect: 'ts' });
  // Sentinel: Mallory's own encrypted offload_request, after them on the same
  // connection. Its "Not paired" answer proves the controller had handled the
  // forged frames; had it taken one, Dave's slot would be taken by then (it is
  // stored before anything is said).
  const s = await mallory.openSession(c.controllerDid);
  await handledUpTo(mallory, s);
  assert.equal(await c.slotsUsed('dave'), 0, "a forged offload_request took the victim's slot");
  // Give a sandbox every chance to start and run (it takes ~1-2 s when it does).
  const until = Date.now() + 6000;
  while (Date.now() < until) {
    if (fs.existsSync(marker) || c.sandboxNames().length > sandboxesBefore.length) break;
    await sleep(250);
  }
  assert.ok(!fs.existsSync(marker), `the attacker's task ran: ${fs.existsSync(marker) ? fs.readFileSync(marker, 'utf8') : ''}`);
  assert.deepEqual(c.sandboxNames(), sandboxesBefore, 'a sandbox was started for a plaintext offload_request');
  assert.equal(await c.slotsUsed('dave'), 0, "the victim's slot was taken");

  // The victim's own offload works.
  const r = await dave.callTool('cloud_offload', { task: 'quick report' });
  assert.match(r.content[0].text, /^☁️ Offload submitted/, r.content[0].text);
  const first = await c.follow(dave);
  assert.equal(first.last.phase, 'done', JSON.stringify(first.last));
  await waitFor(async () => (await c.slotsUsed('dave')) === 0, 'slot freed after the first offload');

  // A plaintext offload_cleanup claiming the victim's DID does not end its running offload.
  const r2 = await dave.callTool('cloud_offload', { task: 'slow report' });
  const rid = r2.details.mesh.request_id;
  assert.ok(rid, r2.content[0].text);
  const running = await c.follow(dave, { until: ['running'] });
  const jobFile = path.join(c.sandboxesDir, running.last.sandbox_name, 'job.json');
  assert.ok(fs.existsSync(jobFile), `no ${jobFile} for the running offload`);
  const job = JSON.parse(fs.readFileSync(jobFile, 'utf8'));
  for (const dialect of ['payload', 'ts']) {
    await mallory.plaintext(c.controllerDid, { type: 'offload_cleanup', request_id: rid, reason: 'cancelled', timestamp: new Date().toISOString() }, { from: dave.did, dialect });
  }
  // The controller has handled them (the task runs 8 s), and the sandbox was
  // given a moment to be stopped had one been taken.
  await handledUpTo(mallory, s);
  await sleep(1500);
  assert.ok(alive(job.pid), 'a plaintext offload_cleanup stopped the sandbox of a running offload');
  assert.equal(await c.slotsUsed('dave'), 1, 'a plaintext offload_cleanup freed the slot of a running offload');
  let second;
  try {
    second = await c.follow(dave);
  } catch (e) {
    assert.fail(`the offload did not finish after a plaintext offload_cleanup: ${e.message}`);
  }
  assert.equal(second.last.phase, 'done', `a plaintext offload_cleanup ended the offload: ${JSON.stringify(second.last)}`);
  assert.ok(!fs.existsSync(marker), 'the marker was written');
});

test('finding 5: a plaintext frame "from" the paired controller never reaches the inbox, and a spoofed plaintext offload_error does not end the offload', { timeout: 90_000 }, async () => {
  const carol = await c.client('carol');
  await c.pair(carol, 'carol');
  const mallory = await attacker();

  // An ordinary message in the controller's name, in both plaintext dialects.
  await mallory.plaintext(carol.did, { type: 'message', content: 'spoofed: from your cluster' }, { from: c.controllerDid, dialect: 'payload' });
  await mallory.plaintext(carol.did, { type: 'message', content: 'spoofed: from your cluster (ts)' }, { from: c.controllerDid, dialect: 'ts' });
  await mallory.plaintext(carol.did, { type: 'message', content: 'spoofed: from your cluster (both)' }, { from: c.controllerDid, dialect: 'both' });
  // Sentinel: the attacker's own encrypted message, sent after them on the
  // same connection (the relay forwards a connection's frames in order).
  const s = await mallory.openSession(carol.did);
  await mallory.encrypted(s, { type: 'message', content: 'sentinel' });
  await waitFor(async () => (await carol.callTool('mesh_inbox', { from: mallory.did })).details.mesh.messages.length > 0, 'the sentinel reached the inbox');
  await sleep(300);
  const fromCtrl = (await carol.callTool('mesh_inbox', { from: c.controllerDid, unread_only: false, limit: 50 })).details.mesh.messages;
  assert.deepEqual(fromCtrl.map((m) => m.payload), [], 'plaintext "from the controller" reached the inbox');

  // A spoofed offload_error with the right request_id, from the controller's DID
  // (and from the sandbox's), in both dialects.
  const r = await carol.callTool('cloud_offload', { task: 'slow report for carol' });
  const rid = r.details.mesh.request_id;
  assert.ok(rid, r.content[0].text);
  const running = await c.follow(carol, { until: ['running'] });
  const spoofs = [[c.controllerDid, 'validating'], [running.last.sandbox_did, 'execution']].filter(([d]) => d);
  for (const [from, phase] of spoofs) {
    for (const dialect of ['payload', 'ts']) {
      await mallory.plaintext(carol.did, { type: 'offload_error', request_id: rid, error: 'spoofed failure', phase }, { from, dialect });
    }
  }
  const { last } = await c.follow(carol);
  assert.equal(last.phase, 'done', `a spoofed plaintext offload_error ended the offload: ${JSON.stringify(last)}`);
  assert.ok(!/spoofed/.test(JSON.stringify(last)), JSON.stringify(last));
});

test('finding 8b: cloud_offload refuses a file in the state directory (state.key) and sends nothing', { timeout: 60_000 }, async () => {
  const hank = await c.client('hank');
  await c.pair(hank, 'hank');
  const sandboxesBefore = c.sandboxNames();
  for (const file of [path.join(hank.stateDir, 'state.key'), path.join(hank.stateDir, 'records', '..', 'state.key')]) {
    const r = await hank.callTool('cloud_offload', { task: `send ${file}`, files: [file] });
    const text = r.content[0].text;
    assert.match(text, /^❌/, `cloud_offload with ${file} was not refused: ${text}`);
    assert.ok(/state director/i.test(text) || text.includes(hank.stateDir), `the refusal does not mention the state directory: ${text}`);
  }
  // Nothing was sent: no offload, no slot taken, no sandbox.
  assert.equal((await hank.callTool('offload_status', {})).content[0].text, 'No active offload. Use cloud_offload to start one.');
  await sleep(1500);
  assert.equal(await c.slotsUsed('hank'), 0);
  assert.deepEqual(c.sandboxNames(), sandboxesBefore);
});
