// Every kars-mesh tool through a REAL OpenClaw Gateway (openclaw 2026.9.6,
// Node 24, POST /tools/invoke) against a local kars cluster: the REAL
// AgentMesh relay and registry, a controller node (engine role "controller")
// that starts real sandbox processes (js-host/sandbox-main.js) running the
// `--exec` command tests/fixtures/offload-task.mjs, and two peer nodes.
// One Gateway for the whole file; the tests run in order:
//   1. bad input for each of the 8 tools before pairing: a failed call as
//      OpenClaw's tool contract has it (HTTP 400, ok:false) with the engine's
//      exact ❌ text as the message, and nothing changed anywhere;
//   2. mesh_pair, mesh_await on a named peer, discover, cloud_offload with an
//      input file followed through offload_status {wait_seconds, after_events}
//      to done (output files in <state_dir>/files/incoming/<id8>/), the
//      message_sending hook (chat.send) prepending the offload news,
//      offload_status after done, and offload_cancel of a slow offload (the
//      controller's offload_list empty, slots_used 0, sandbox gone);
//   3. an offload with more than 40 events followed to done.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
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
const NO_OFFLOAD = 'No active offload. Use cloud_offload to start one.';
const NO_CANCEL = 'No active cloud offload to cancel.';

let srv;
let oc;
let gw;
let ctrl;
let bob;
let carol;
let meshDir;
let clawDid;
let sandboxDir;
const dirs = [];
const nodes = [];

function tmp(name) {
  const d = mkdtempSync(path.join(tmpdir(), `kars-ocoff-${name}-`));
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
  [ctrl, bob, carol] = await Promise.all([
    node('controller', { role: 'controller', clusterName: 'local-lab', sandboxes: { dir: sandboxDir, exec: TASK_CMD, progressMs: 500 } }),
    node('bob'),
    node('carol'),
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
  meshDir = path.join(oc.base, 'mesh-state');
  gw = await oc.startGateway();
  assert.ok(
    await gw.waitForLog(/kars-mesh: mesh node started \(did:mesh:[0-9a-f]{32}\)/, 60_000),
    `the kars-mesh service did not start the node:\n${gw.logs().slice(-4000)}`,
  );
  clawDid = /kars-mesh: mesh node started \((did:mesh:[0-9a-f]{32})\)/.exec(gw.logs())[1];
  // Registered under its display_name (so peers can send to "claw").
  await waitFor(async () => {
    const reg = await (await fetch(`${srv.registryUrl}/v1/discover?capability=claw`)).json();
    return reg.results?.some((a) => a.did === clawDid);
  }, 'claw registered');
});

after(async () => {
  await gw?.stop();
  for (const n of nodes) await n.stop().catch(() => {});
  if (sandboxDir) await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  oc?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** POST /tools/invoke; asserts HTTP 200 {ok:true} and returns the tool result. */
async function invoke(tool, args, ms = 30_000) {
  const r = await gw.invoke(tool, args, ms);
  assert.equal(r.status, 200, `${tool}: HTTP ${r.status} ${r.text.slice(0, 1000)}\n${gw.logs().slice(-3000)}`);
  assert.equal(r.json?.ok, true, r.text.slice(0, 1000));
  const result = r.json.result;
  assert.ok(Array.isArray(result?.content) && result.content[0]?.type === 'text', r.text.slice(0, 1000));
  return result;
}
const text = (result) => result.content[0].text;

/** POST /tools/invoke of a failed call (the tool threw a ToolInputError): HTTP 400 {ok:false}; returns the message. */
async function invokeFails(tool, args, ms = 30_000) {
  const r = await gw.invoke(tool, args, ms);
  assert.equal(r.status, 400, `${tool}: expected a failed call, got HTTP ${r.status} ${r.text.slice(0, 1000)}`);
  assert.equal(r.json?.ok, false, r.text.slice(0, 1000));
  assert.equal(r.json.error?.type, 'tool_error', r.text.slice(0, 1000));
  return r.json.error.message;
}

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

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// What every tool refuses, before pairing. The texts are the engine's
// (src/agent/*.rs). offload_status and offload_cancel do not check their
// arguments: with nothing active they answer as usual.
const BAD = () => [
  // mesh_pair: missing, wrong type, malformed, oversized
  ['mesh_pair', {}, '❌ No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: none)'],
  ['mesh_pair', { token: 5 }, "❌ `token` must be a string: the pairing token starting with azcp_1_ that the cluster's operator gave you."],
  ['mesh_pair', { token: 'nope' }, '❌ Invalid pairing token. Must start with azcp_1_ and contain valid data. (token length: 4)'],
  ['mesh_pair', { token: `azcp_1_${'A'.repeat(20_000)}` }, '❌ Invalid pairing token. Must start with azcp_1_ and contain valid data. (token length: 20007)'],
  // cloud_offload: missing, wrong type, oversized, not paired
  ['cloud_offload', {}, '❌ cloud_offload requires a `task` parameter (a string describing what the sandbox should do). Aliases accepted: task, prompt, description, request, content, instruction, query.'],
  ['cloud_offload', { task: 5 }, '❌ cloud_offload requires a `task` parameter (a string describing what the sandbox should do). Aliases accepted: task, prompt, description, request, content, instruction, query.'],
  ['cloud_offload', { task: 'x'.repeat(100_001) }, '❌ The task is longer than 100000 characters. Put long material in a file and pass it in `files`.'],
  ['cloud_offload', { task: 'summarise the notes' }, '❌ Not paired with any kars cluster. Use mesh_pair first.'],
  ['cloud_offload', { task: 'summarise the notes', files: 'notes.txt' }, '❌ Not paired with any kars cluster. Use mesh_pair first.'],
  // offload_status: bad arguments are refused before anything else; offload_cancel takes none
  ['offload_status', { wait_seconds: 'abc' }, '❌ offload_status: `wait_seconds` must be a number of seconds from 0 to 600.'],
  ['offload_status', { wait_seconds: 601 }, '❌ offload_status: `wait_seconds` must be a number of seconds from 0 to 600.'],
  ['offload_status', { after_events: -1 }, '❌ offload_status: `after_events` must be a whole number ≥ 0 (the `events_total` of the previous answer).'],
  ['offload_status', { after_events: 1.5 }, '❌ offload_status: `after_events` must be a whole number ≥ 0 (the `events_total` of the previous answer).'],
  ['offload_status', {}, NO_OFFLOAD],
  ['offload_cancel', { request_id: 5 }, NO_CANCEL],
  // mesh_send: missing, wrong type, oversized, unknown peer, own DID
  ['mesh_send', {}, '❌ mesh_send requires `to` (AMID or agent name). Use `discover` to list known agents.'],
  ['mesh_send', { to: 'bob' }, '❌ mesh_send requires `message` content.'],
  ['mesh_send', { to: 5, message: 'x' }, '❌ mesh_send: `to` must be a string. Pass `to` (an agent name or did:mesh: DID) and `message` (text).'],
  ['mesh_send', { to: 'bob', message: 5 }, '❌ mesh_send: `message` must be text or a JSON object.'],
  ['mesh_send', { to: 'x'.repeat(5000), message: 'x' }, '❌ mesh_send: `to` is too long (5000 characters; at most 256). Pass `to` (an agent name or did:mesh: DID) and `message` (text).'],
  ['mesh_send', { to: 'bob', message: 'x'.repeat(1_100_000) }, /^❌ Send failed: Message is 110\d{4} bytes; the limit is 1048576\. Shorten it, or split it over several mesh_send calls\.$/], // the size of the sealed envelope varies by a byte or two
  ['mesh_send', { to: 'nobody-here', message: 'x' }, '❌ Send failed: no agent is registered under the name "nobody-here". Use `discover` to list known agents, or pass a did:mesh: DID.'],
  ['mesh_send', { to: `did:mesh:${'0'.repeat(32)}`, message: 'x' }, `❌ Send failed: did:mesh:${'0'.repeat(32)} has no prekey bundle in the registry: it is not registered, or the registry restarted and the agent has not come back yet. Check the DID or try again later.`],
  ['mesh_send', { to: () => clawDid, message: 'x' }, '❌ mesh_send: `to` is this agent\'s own DID; pass another agent\'s DID or name.'],
  // mesh_inbox: wrong types, a name where a DID belongs, negative
  ['mesh_inbox', { limit: 'abc' }, '❌ mesh_inbox: `limit` must be a number. Call mesh_inbox with no arguments to see unread messages.'],
  ['mesh_inbox', { from: 'bob' }, '❌ mesh_inbox: `from` must be a did:mesh: DID (did:mesh: + 32 lowercase hex) or a base58 AMID; use `discover` to find an agent\'s DID.'],
  ['mesh_inbox', { timeout_seconds: -1 }, '❌ mesh_inbox: `timeout_seconds` must not be negative. Call mesh_inbox with no arguments to see unread messages.'],
  ['mesh_inbox', { mark_read: 'maybe' }, '❌ mesh_inbox: `mark_read` must be true or false. Call mesh_inbox with no arguments to see unread messages.'],
  ['mesh_inbox', { ids: 'x' }, '❌ mesh_inbox: `ids` must be an array of strings. Call mesh_inbox with no arguments to see unread messages.'],
  // mesh_await: missing, wrong type, empty, oversized
  ['mesh_await', {}, '❌ mesh_await: `senders` must be a non-empty array of agent names.'],
  ['mesh_await', { senders: [] }, '❌ mesh_await: `senders` must be a non-empty array of agent names.'],
  ['mesh_await', { senders: 'bob' }, '❌ mesh_await: `senders` must be a non-empty array of agent names.'],
  ['mesh_await', { senders: [''] }, '❌ mesh_await: `senders` must contain at least one non-empty agent name.'],
  ['mesh_await', { senders: [5] }, '❌ mesh_await: `senders` must be an array of strings. Pass `senders` as an array of agent names or DIDs, e.g. ["analyst"].'],
  ['mesh_await', { senders: Array(500).fill('bob') }, '❌ mesh_await: `senders` has too many entries (500; at most 50). Pass `senders` as an array of agent names or DIDs, e.g. ["analyst"].'],
  ['mesh_await', { senders: ['x'.repeat(5000)] }, '❌ mesh_await: `senders` is too long (5000 characters; at most 128). Pass `senders` as an array of agent names or DIDs, e.g. ["analyst"].'],
  ['mesh_await', { senders: ['bob'], timeout_seconds: 'abc' }, '❌ mesh_await: `timeout_seconds` must be a number. Pass `senders` as an array of agent names or DIDs, e.g. ["analyst"].'],
  // discover: wrong types, oversized, negative
  ['discover', { capability: 5 }, '❌ discover: `capability` must be a string. Pass `capability` as a string such as "analysis" (or nothing to list kars-mesh agents).'],
  ['discover', { limit: 'abc' }, '❌ discover: `limit` must be a number. Pass `capability` as a string such as "analysis" (or nothing to list kars-mesh agents).'],
  ['discover', { capability: 'x'.repeat(5000) }, '❌ discover: `capability` is too long (5000 characters; at most 256). Pass `capability` as a string such as "analysis" (or nothing to list kars-mesh agents).'],
  ['discover', { limit: -3 }, '❌ discover: `limit` must not be negative. Pass `capability` as a string such as "analysis" (or nothing to list kars-mesh agents).'],
];

test('bad input for each of the 8 tools through the Gateway: a failed call (HTTP 400) with the engine\'s exact ❌ text, and nothing changes', { timeout: 120_000 }, async () => {
  const inboxBefore = await invoke('mesh_inbox', { unread_only: false });
  assert.equal(inboxBefore.details.mesh.total, 0, text(inboxBefore));
  const tools = new Set();
  for (const [tool, rawArgs, want] of BAD()) {
    const args = Object.fromEntries(Object.entries(rawArgs).map(([k, v]) => [k, typeof v === 'function' ? v() : v]));
    const label = `${tool} ${JSON.stringify(args).slice(0, 80)}`;
    if (want instanceof RegExp || want.startsWith('❌')) {
      // A failed call: the engine's text is the error message.
      const message = await invokeFails(tool, args);
      if (want instanceof RegExp) assert.match(message, want, label);
      else assert.equal(message, want, label);
    } else {
      const r = await invoke(tool, args);
      assert.equal(text(r), want, label);
      assert.equal(r.details.mesh.error, undefined, label);
    }
    tools.add(tool);
  }
  assert.equal(tools.size, 8);

  // Nothing changed: no offload, no pairing, no message sent or received.
  assert.equal(text(await invoke('offload_status', {})), NO_OFFLOAD);
  assert.equal(text(await invoke('offload_cancel', {})), NO_CANCEL);
  const inboxAfter = await invoke('mesh_inbox', { unread_only: false });
  assert.equal(inboxAfter.details.mesh.total, 0, text(inboxAfter));
  assert.deepEqual(inboxAfter.details.mesh.marked_read, []);
  assert.equal((await ctrl.callTool('pair_list', {})).details.mesh.pairings.length, 0);
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);
  for (const peer of [bob, carol, ctrl]) {
    const got = await peer.callTool('mesh_inbox', { unread_only: false });
    assert.equal(got.details.mesh.total, 0, `${peer.did} received something: ${got.content[0].text}`);
  }
  assert.equal(gw.logs().includes('azcp_1_AAAA'), false, 'a token-like argument reached the Gateway log');
});

test('every tool through the Gateway: pair, mesh_await, discover, cloud_offload to done, the message_sending hook, offload_status, offload_cancel', { timeout: 180_000 }, async (t) => {
  // ---- mesh_pair with a token from the controller ----------------------
  const gen = await ctrl.callTool('pair_generate', { name: 'claw', slots: 1, capabilities: 'offload', expires: '1d' });
  const token = gen.details.mesh.token;
  const paired = await invoke('mesh_pair', { token }, 60_000);
  assert.match(text(paired), /^✅ Paired successfully with kars cluster "local-lab"/, text(paired));
  assert.equal(paired.details.mesh.pairing.controller_did, ctrl.did);
  const [p] = (await ctrl.callTool('pair_list', {})).details.mesh.pairings;
  assert.equal(p.name, 'claw');
  assert.equal(p.slots_used, 0);

  // ---- mesh_await: the Gateway's agent waits for carol, carol sends ------
  const awaiting = invoke('mesh_await', { senders: ['carol'], timeout_seconds: 60 }, 90_000);
  await new Promise((r) => setTimeout(r, 500)); // the wait is pending in the engine
  const sent = await carol.callTool('mesh_send', { to: 'claw', message: 'analysis ready' }, { timeoutMs: 40_000 });
  assert.doesNotMatch(sent.content[0].text, /^❌/, sent.content[0].text);
  const awaited = await awaiting;
  const a = awaited.details.mesh;
  assert.deepEqual(JSON.parse(text(awaited)), a, 'mesh_await text and details are the same JSON');
  assert.equal(a.status, 'all_received', text(awaited));
  assert.deepEqual(a.requested_senders, ['carol']);
  assert.deepEqual(a.missing, []);
  assert.equal(a.matched.carol.length, 1, text(awaited));
  assert.deepEqual(a.answered_by.carol, [carol.did]);
  const fromCarol = await invoke('mesh_inbox', { ids: a.matched.carol });
  assert.equal(fromCarol.details.mesh.messages.length, 1, text(fromCarol));
  const m = fromCarol.details.mesh.messages[0];
  assert.deepEqual([m.id, m.from, m.evidence, m.payload.content], [a.matched.carol[0], carol.did, 'encrypted', 'analysis ready']);

  // ---- discover ---------------------------------------------------------
  const found = await invoke('discover', { capability: 'carol' });
  assert.deepEqual(found.details.mesh.agents.map((x) => x.did), [carol.did], text(found));

  // ---- cloud_offload with an input file, followed to done ----------------
  const work = tmp('work');
  const input = Buffer.from('quarterly numbers: 1, 2, 3\n');
  writeFileSync(path.join(work, 'notes.txt'), input);
  const started = await invoke('cloud_offload', { task: 'summarise the notes', files: [path.join(work, 'notes.txt')], timeout_minutes: 5 });
  assert.match(text(started), /^☁️ Offload submitted — orchestrating in background\nRequest ID: [0-9a-f-]{36}\n/, text(started));
  const rid = started.details.mesh.request_id;
  assert.deepEqual(started.details.mesh.files, [{ name: 'notes.txt', size: input.length, sha256: sha(input) }]);

  const follower = await follow({ timeoutMs: 60_000 });
  const { seen, last } = follower;
  assert.equal(last.phase, 'done', JSON.stringify(last));
  for (const ph of ['submitted', 'validating', 'spawning', 'scheduled', 'ready', 'connecting', 'acknowledged', 'running', 'returning', 'done']) {
    assert.ok(seen.includes(ph), `phase ${ph} missing from ${seen.join(' ')}`);
  }
  assert.equal(last.request_id, rid);
  // Chosen by the controller at random, never derived from the request id.
  assert.match(last.sandbox_name, /^offload-[0-9a-f]{16}$/);
  assert.ok(!last.sandbox_name.includes(rid.slice(0, 8)), last.sandbox_name);
  assert.match(last.summary, /processed 1 input\(s\) for: summarise the notes/);
  const byName = Object.fromEntries(last.outputs.map((o) => [o.name, o]));
  assert.deepEqual(Object.keys(byName).sort(), ['inputs.json', 'result.bin']);
  for (const o of last.outputs) {
    assert.equal(o.path, `incoming/${rid.slice(0, 8)}/${o.name}`);
    const file = path.join(meshDir, 'files', o.path);
    const bytes = readFileSync(file);
    assert.equal(bytes.length, o.size);
    assert.equal(sha(bytes), o.sha256);
    assert.equal(statSync(file).mode & 0o777, 0o600);
  }
  // The sandbox saw exactly our input: its name, size and SHA-256.
  const report = JSON.parse(readFileSync(path.join(meshDir, 'files', byName['inputs.json'].path), 'utf8'));
  assert.deepEqual(report, { task: 'summarise the notes', inputs: [{ name: 'notes.txt', size: input.length, sha256: sha(input) }] });
  const expected = Buffer.alloc(700 * 1024);
  for (let i = 0; i < expected.length; i++) expected[i] = (i * 31 + 7) & 0xff;
  assert.equal(byName['result.bin'].sha256, sha(expected));

  // ---- offload_status after done ------------------------------------------
  // The answer that reported done is offload_status's snapshot.
  const doneText = `✅ Offload ${rid.slice(0, 8)} — done`;
  assert.ok(follower.text.startsWith(doneText), follower.text);
  assert.ok(follower.text.includes(`  incoming/${rid.slice(0, 8)}/inputs.json (${byName['inputs.json'].size} bytes, sha256 `), follower.text);
  // A plain offload_status shows it once more and clears it (a waiting
  // answer never clears it).
  const snap = await invoke('offload_status', {});
  assert.ok(text(snap).startsWith(doneText), text(snap));
  assert.equal(snap.details.mesh.active, false);
  assert.equal(text(await invoke('offload_status', {})), NO_OFFLOAD);
  await waitFor(async () => (await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used === 0, 'slot freed after done');
  assert.equal((await ctrl.callTool('offload_list', {})).details.mesh.offloads.length, 0);

  // ---- offload_cancel on a slow offload ---------------------------------
  const slow = await invoke('cloud_offload', { task: 'sleep 60 then report' });
  assert.match(text(slow), /^☁️ Offload submitted/, text(slow));
  const rid2 = slow.details.mesh.request_id;
  await follow({ until: ['running'] });
  const list = (await ctrl.callTool('offload_list', {})).details.mesh.offloads;
  assert.deepEqual(list.map((o) => [o.request_id, o.phase !== undefined]), [[rid2, true]]);
  const job = JSON.parse(readFileSync(path.join(sandboxDir, list[0].sandbox_name, 'job.json'), 'utf8'));
  assert.ok(isAlive(job.pid), 'the sandbox runs');

  // ---- the message_sending hook: the next outgoing message carries the news
  // chat.send of "/offload" makes the Gateway send a reply (the command's
  // offload_status text); OpenClaw runs message_sending on it (channel
  // webchat), and the plugin puts the engine's offload_notifications lines in
  // front. (The news lives on the active offload: once a finished offload has
  // been shown and cleared there is none left to prepend.)
  const r = await gw.call('chat.send', { sessionKey: 'hook-test', message: '/offload', idempotencyKey: 'hook-1' });
  assert.equal(r.code, 0, r.stdout.slice(0, 1000) + r.stderr.slice(-1000));
  const [reply] = await assistantTexts('hook-test', 1);
  const short = rid2.slice(0, 8);
  const cut = reply.indexOf(`\n\n⚙️ Offload ${short} — running\nRequest ID: ${rid2}\n`);
  assert.ok(cut > 0, `no notification lines in front of the /offload reply:\n${reply}`);
  // The news: one line per item (non-final news coalesce to the newest). The
  // first offload's end was never shown by the hook, so it comes first: news
  // outlives the offload it is about.
  const news = reply.slice(0, cut).split('\n');
  for (const line of news) assert.match(line, /^\S+ Offload [0-9a-f]{8} [a-z]+: \S/, reply);
  assert.ok(news.includes(`✅ Offload ${rid.slice(0, 8)} done: finished with 2 output file(s)`), reply);
  assert.match(news.at(-1), new RegExp(`^⚙️ Offload ${short} running: `), reply);
  const cancelled = await invoke('offload_cancel', {});
  assert.equal(text(cancelled), `🛑 Offload ${rid2.slice(0, 8)} cancelled. Cleanup signal sent to the controller; the sandbox will be torn down shortly.`);
  assert.equal(cancelled.details.mesh.cancelled, true);
  // A waiting offload_status on the cancelled offload answers at once.
  const ended = await invoke('offload_status', { wait_seconds: 5, after_events: 0 });
  assert.match(text(ended), new RegExp(`^❌ Offload ${rid2.slice(0, 8)} — error\n`), text(ended));
  assert.match(text(ended), /\nError: Cancelled by user via offload_cancel$/, text(ended));
  // A waiting answer does not clear the finished offload (ENGINE.md: only a plain offload_status does).
  const again = await invoke('offload_status', {});
  assert.match(text(again), new RegExp(`^❌ Offload ${rid2.slice(0, 8)} — error\n`), text(again));
  // Shown once without waiting, the finished offload is cleared.
  assert.equal(text(await invoke('offload_status', {})), NO_OFFLOAD);
  await waitFor(async () => (await ctrl.callTool('offload_list', {})).details.mesh.offloads.length === 0, 'controller dropped the offload');
  const [p2] = (await ctrl.callTool('pair_list', {})).details.mesh.pairings;
  assert.equal(p2.slots_used, 0, JSON.stringify(p2));
  await waitFor(() => !isAlive(job.pid), 'sandbox process gone');
  assert.equal(text(await invoke('offload_cancel', {})), NO_CANCEL);
  assert.ok(!existsSync(path.join(meshDir, 'files', 'incoming', rid2.slice(0, 8))), 'a cancelled offload returned no files');
});

/** The assistant messages of a chat session (chat.history), once there are at least n. */
async function assistantTexts(sessionKey, n) {
  for (let i = 0; i < 150; i++) {
    const r = await gw.call('chat.history', { sessionKey, limit: 20 });
    assert.equal(r.code, 0, r.stdout.slice(0, 1000) + r.stderr.slice(-1000));
    const texts = (r.json.messages ?? [])
      .filter((m) => m.role === 'assistant')
      .map((m) => (Array.isArray(m.content) ? m.content.map((c) => c.text ?? '').join('') : String(m.content)));
    if (texts.length >= n) return texts;
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(`no reply in ${sessionKey}:\n${gw.logs().slice(-3000)}`);
}

test('a long offload (more than 40 events): offload_status {wait_seconds, after_events} still reports done when it happens', { timeout: 120_000 }, async (t) => {
  // 'sleep 20' with progress every 500 ms: about 48 events, over the engine's
  // cap of 40 kept events.
  const started = await invoke('cloud_offload', { task: 'sleep 20 then report' });
  assert.match(text(started), /^☁️ Offload submitted/, text(started));
  const calls = [];
  let afterEvents = 0;
  let last;
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    const t0 = Date.now();
    const r = await invoke('offload_status', { wait_seconds: 25, after_events: afterEvents }, 40_000);
    last = r.details.mesh;
    calls.push({ ms: Date.now() - t0, after: afterEvents, events: last.events?.length, phase: last.phase });
    if (!last.events || ['done', 'error'].includes(last.phase)) break;
    afterEvents = last.events_total;
  }
  assert.equal(last.phase, 'done', JSON.stringify(calls));
  assert.ok(last.outputs.some((o) => o.name === 'result.bin'), JSON.stringify(last.outputs));
  await waitFor(async () => (await ctrl.callTool('pair_list', {})).details.mesh.pairings[0].slots_used === 0, 'slot freed');
  const final = calls.at(-1);
  // The call that reports done returns when done arrives, not when wait_seconds runs out.
  assert.ok(final.ms < 15_000, `the last offload_status waited ${final.ms} ms: ${JSON.stringify(calls.slice(-3))}`);
  assert.ok(last.events_total > 40 && last.events.length === 40, `events_total ${last.events_total}, kept ${last.events.length}`);
});
