// The plugin inside a REAL OpenClaw Gateway (openclaw 2026.9.6, Node 24),
// driven through POST /tools/invoke (the Gateway's own policy path, no LLM),
// against the REAL AgentMesh relay and registry:
//   - the kars-mesh service starts the node when the Gateway starts
//   - mesh_pair with a token from a controller node (engine role "controller")
//   - mesh_send to a second engine node by its registered name; that node
//     reads it from its inbox and replies; mesh_inbox through the Gateway
//     shows the reply
//   - discover through the Gateway
//   - bad input answers with the engine's ❌ text (HTTP 200), never a throw
//   - stopping the Gateway stops the node (the state directory's lock is released)
//   - a node that cannot start: every tool answers "❌ Failed to connect to mesh"
//   - /offload and /offload cancel sent as chat messages (chat.send over the
//     Gateway's WebSocket RPC) answer with the engine's offload_status /
//     offload_cancel texts
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { makeOpenClawHome } from './harness/openclaw.mjs';
import { createNode } from '../js-host/node-host.js';
import { untilRegistered } from './harness/registered.mjs';

let srv;
let oc;
let gw;
const dirs = [];
const nodes = [];

before(async () => {
  srv = await startServers();
});
after(async () => {
  await gw?.stop();
  for (const n of nodes) await n.stop().catch(() => {});
  await srv?.stop();
  oc?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function node(name, extra = {}) {
  const stateDir = mkdtempSync(path.join(tmpdir(), `kars-oc-${name}-`));
  dirs.push(stateDir);
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.push(n);
  return n;
}

async function registered(n) {
  await untilRegistered(n, 'node');
}

/** POST /tools/invoke; asserts HTTP 200 {ok:true} and returns the tool result. */
async function invoke(tool, args, ms) {
  const r = await gw.invoke(tool, args, ms);
  assert.equal(r.status, 200, `${tool}: HTTP ${r.status} ${r.text.slice(0, 1000)}\n${gw.logs().slice(-3000)}`);
  assert.equal(r.json?.ok, true, r.text.slice(0, 1000));
  const result = r.json.result;
  assert.ok(Array.isArray(result?.content) && result.content[0]?.type === 'text', r.text.slice(0, 1000));
  return result;
}
const text = (result) => result.content[0].text;

test('OpenClaw Gateway: pair, send, receive a reply, discover, bad input', { timeout: 240_000 }, async () => {
  const ctrl = await node('controller', { role: 'controller', clusterName: 'local-lab' });
  const bob = await node('bob');
  await Promise.all([registered(ctrl), registered(bob)]);

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

  // The background service starts the node at Gateway start, before any tool call.
  assert.ok(
    await gw.waitForLog(/kars-mesh: mesh node started \(did:mesh:[0-9a-f]{32}\)/, 60_000),
    `the kars-mesh service did not start the node:\n${gw.logs().slice(-4000)}`,
  );
  assert.ok(existsSync(path.join(meshDir, 'lock')), 'the node holds its state directory');

  // ---- bad input: the engine's error text, HTTP 200, no throw ------------
  const noToken = await invoke('mesh_pair', {});
  assert.match(text(noToken), /^❌ /);
  assert.match(text(noToken), /token/i);
  assert.ok(noToken.details.mesh.error, JSON.stringify(noToken));

  const noTo = await invoke('mesh_send', { message: 'hello' });
  assert.match(text(noTo), /^❌ /);
  assert.match(text(noTo), /`to`/);
  assert.ok(noTo.details.mesh.error);

  const noMessage = await invoke('mesh_send', { to: 'bob' });
  assert.match(text(noMessage), /^❌ /);
  assert.ok(noMessage.details.mesh.error);

  // ---- pairing with the controller -------------------------------------
  const gen = await ctrl.callTool('pair_generate', { name: 'claw', slots: 1, capabilities: 'offload', expires: '1d' });
  const token = gen.details.mesh.token;
  assert.match(token, /^azcp_1_/);
  const paired = await invoke('mesh_pair', { token }, 60_000);
  assert.match(text(paired), /^✅ Paired successfully with kars cluster "local-lab"/, text(paired));
  assert.equal(paired.details.mesh.pairing.controller_did, ctrl.did);
  assert.ok(!JSON.stringify(paired).includes(token), 'the pairing result must not echo the token');
  assert.ok(!gw.logs().includes(token), 'the token must not reach the Gateway log');

  // ---- send to bob by name; bob reads it and replies --------------------
  const sent = await invoke('mesh_send', { to: 'bob', message: 'hello bob, from OpenClaw' }, 60_000);
  assert.doesNotMatch(text(sent), /^❌/, text(sent));
  assert.equal(sent.details.mesh.to, bob.did);

  const got = await bob.callTool('mesh_inbox', { wait_seconds: 30 }, { timeoutMs: 40_000 });
  assert.equal(got.details.mesh.messages.length, 1, JSON.stringify(got));
  const msg = got.details.mesh.messages[0];
  assert.equal(msg.evidence, 'encrypted');
  assert.equal(msg.payload.content, 'hello bob, from OpenClaw');
  const clawDid = msg.from;
  assert.match(clawDid, /^did:mesh:[0-9a-f]{32}$/);

  const reply = await bob.callTool('mesh_send', { to: clawDid, message: 'hi claw, bob here' }, { timeoutMs: 40_000 });
  assert.doesNotMatch(reply.content[0].text, /^❌/, reply.content[0].text);

  const inbox = await invoke('mesh_inbox', { block_until_message: true, timeout_seconds: 30 }, 60_000);
  assert.match(text(inbox), /hi claw, bob here/, text(inbox));
  const replies = inbox.details.mesh.messages;
  assert.equal(replies.length, 1, JSON.stringify(inbox));
  assert.equal(replies[0].from, bob.did);
  assert.equal(replies[0].evidence, 'encrypted');

  // ---- discover ---------------------------------------------------------
  const byName = await invoke('discover', { capability: 'bob' }, 30_000);
  assert.doesNotMatch(text(byName), /^❌/, text(byName));
  assert.ok(byName.details.mesh.agents.some((a) => a.did === bob.did), JSON.stringify(byName));
  const all = await invoke('discover', {}, 30_000);
  const dids = all.details.mesh.agents.map((a) => a.did);
  assert.ok(dids.includes(bob.did) && dids.includes(ctrl.did), JSON.stringify(all));
  assert.ok(!dids.includes(clawDid), 'the engine leaves the asking agent out of its own results');
  // The Gateway's agent registered under the configured display_name.
  const reg = await (await fetch(`${srv.registryUrl}/v1/discover?capability=claw`)).json();
  assert.deepEqual(reg.results.map((a) => a.did), [clawDid]);

  // ---- the other four tools are registered and forwarded to the engine ---
  for (const tool of ['cloud_offload', 'offload_status', 'offload_cancel', 'mesh_await']) {
    const r = await gw.invoke(tool, {}, 30_000);
    assert.equal(r.status, 200, `${tool} is not registered in the Gateway: ${r.status} ${r.text.slice(0, 500)}`);
    assert.ok(Array.isArray(r.json?.result?.content), r.text.slice(0, 500));
  }

  // ---- stopping the Gateway stops the node (service stop) ---------------
  await gw.stop();
  const code = await gw.exited;
  assert.ok(!existsSync(path.join(meshDir, 'lock')), `the node's lock was not released on Gateway stop (${JSON.stringify(code)})`);
  gw = null;
});

test('OpenClaw Gateway: a node that cannot start answers "❌ Failed to connect to mesh" and the Gateway keeps running', { timeout: 180_000 }, async () => {
  const h = makeOpenClawHome({
    pluginConfig: (base) => {
      const blocker = path.join(base, 'not-a-directory');
      writeFileSync(blocker, 'x');
      // The state directory cannot be created: its parent is a regular file.
      return { relay_url: srv.relayUrl, registry_url: srv.registryUrl, state_dir: path.join(blocker, 'mesh') };
    },
  });
  const g = await h.startGateway();
  try {
    assert.ok(
      await g.waitForLog(/kars-mesh: mesh node did not start: /, 60_000),
      `the service did not report the failed start:\n${g.logs().slice(-4000)}`,
    );
    for (const [tool, args] of [['mesh_inbox', {}], ['mesh_send', { to: 'bob', message: 'x' }], ['discover', {}], ['offload_status', {}]]) {
      const r = await g.invoke(tool, args, 30_000);
      assert.equal(r.status, 200, `${tool}: ${r.status} ${r.text.slice(0, 500)}`);
      const result = r.json.result;
      assert.match(result.content[0].text, /^❌ Failed to connect to mesh: \S/, result.content[0].text);
      assert.equal(typeof result.details.mesh.error, 'string');
    }
  } finally {
    await g.stop();
    h.cleanup();
  }
});

test('OpenClaw Gateway: /offload and /offload cancel (chat.send) reply with the engine\'s offload_status / offload_cancel text', { timeout: 180_000 }, async () => {
  // What a fresh engine node (no pairing, no offload) answers, whatever the
  // engine's offload support is today.
  const ref = await node('offload-ref');
  const want = {
    status: (await ref.callTool('offload_status', {})).content[0].text,
    cancel: (await ref.callTool('offload_cancel', {})).content[0].text,
  };
  const h = makeOpenClawHome({
    pluginConfig: (base) => ({ relay_url: srv.relayUrl, registry_url: srv.registryUrl, state_dir: path.join(base, 'mesh-state') }),
  });
  const g = await h.startGateway();
  try {
    const replies = async (sessionKey, n) => {
      for (let i = 0; i < 150; i++) {
        const r = await g.call('chat.history', { sessionKey, limit: 20 });
        assert.equal(r.code, 0, r.stdout.slice(0, 1000) + r.stderr.slice(-1000));
        const texts = (r.json.messages ?? [])
          .filter((m) => m.role === 'assistant')
          .map((m) => (Array.isArray(m.content) ? m.content.map((c) => c.text ?? '').join('') : String(m.content)));
        if (texts.length >= n) return texts;
        await new Promise((res) => setTimeout(res, 200));
      }
      throw new Error(`no reply in ${sessionKey}:\n${g.logs().slice(-3000)}`);
    };
    let r = await g.call('chat.send', { sessionKey: 'offload-test', message: '/offload', idempotencyKey: 'offload-1' });
    assert.equal(r.code, 0, r.stdout.slice(0, 1000) + r.stderr.slice(-1000));
    assert.deepEqual(await replies('offload-test', 1), [want.status]);
    r = await g.call('chat.send', { sessionKey: 'offload-test', message: '/offload cancel', idempotencyKey: 'offload-2' });
    assert.equal(r.code, 0, r.stdout.slice(0, 1000) + r.stderr.slice(-1000));
    assert.deepEqual(await replies('offload-test', 2), [want.status, want.cancel]);
  } finally {
    await g.stop();
    h.cleanup();
  }
});
