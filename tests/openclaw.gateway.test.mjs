// The plugin inside a REAL OpenClaw Gateway (openclaw 2026.9.6, Node 24),
// driven through POST /tools/invoke (the Gateway's own policy path, no LLM),
// against the REAL AgentMesh relay and registry:
//   - the kars-mesh service starts the node when the Gateway starts
//   - mesh_pair with a token from a controller node (engine role "controller")
//   - mesh_send to a second engine node by its registered name; that node
//     reads it from its inbox and replies; mesh_inbox through the Gateway
//     shows the reply
//   - discover through the Gateway
//   - a failed call follows OpenClaw's tool contract (the tool throws): bad
//     input answers HTTP 400 {ok:false, error:{type:"tool_error", message}}
//     with the engine's ❌ text as the message, as OpenClaw's own tools do
//   - stopping the Gateway stops the node (the state directory's lock is released)
//   - a node that cannot start: every tool fails with "❌ Failed to connect to mesh"
//   - the same failure through the Gateway's WebSocket RPC (tools.invoke):
//     {ok:false, error:{message}}
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

/**
 * POST /tools/invoke of a call that fails: OpenClaw's answer to a tool that
 * threw a ToolInputError (openclaw 2026.9.6 tools-invoke-shared: HTTP 400,
 * the message as it is). Returns the message.
 */
async function invokeFails(g, tool, args, ms) {
  const r = await g.invoke(tool, args, ms);
  assert.equal(r.status, 400, `${tool}: expected a failed call, got HTTP ${r.status} ${r.text.slice(0, 1000)}`);
  assert.equal(r.json?.ok, false, r.text.slice(0, 1000));
  assert.equal(r.json.error?.type, 'tool_error', r.text.slice(0, 1000));
  assert.equal(r.json.result, undefined);
  assert.equal(typeof r.json.error.message, 'string');
  return r.json.error.message;
}

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

  // ---- bad input: a failed call (HTTP 400, ok:false), the engine's ❌ text as the message
  assert.equal(
    await invokeFails(gw, 'mesh_pair', {}),
    '❌ No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: none)',
  );
  assert.equal(
    await invokeFails(gw, 'mesh_send', { message: 'hello' }),
    '❌ mesh_send requires `to` (AMID or agent name). Use `discover` to list known agents.',
  );
  assert.equal(await invokeFails(gw, 'mesh_send', { to: 'bob' }), '❌ mesh_send requires `message` content.');
  // A refusal that is not about the arguments' shape: same contract.
  assert.match(await invokeFails(gw, 'mesh_send', { to: 'nobody-here', message: 'x' }, 30_000), /^❌ Send failed: no agent is registered under the name "nobody-here"/);
  // The WebSocket RPC (tools.invoke) reports the same failure with the same text.
  const rpc = await gw.call('tools.invoke', { name: 'mesh_send', args: { to: 'bob' } });
  assert.equal(rpc.code, 0, rpc.stdout.slice(0, 1000) + rpc.stderr.slice(-1000));
  assert.equal(rpc.json?.ok, false, rpc.stdout.slice(0, 1000));
  assert.equal(rpc.json.error?.message, '❌ mesh_send requires `message` content.', rpc.stdout.slice(0, 1000));
  // A failed mesh_pair with a token-like argument: the token reaches neither the answer nor the log.
  const badToken = `azcp_1_${'Q'.repeat(40)}`;
  const refused = await invokeFails(gw, 'mesh_pair', { token: badToken });
  assert.match(refused, /^❌ Invalid pairing token\./, refused);
  assert.ok(!refused.includes(badToken) && !gw.logs().includes(badToken), 'a token-like argument leaked');

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
  // (offload_status and offload_cancel answer; cloud_offload and mesh_await
  // without arguments are failed calls, with the engine's text: not a 404.)
  for (const tool of ['offload_status', 'offload_cancel']) {
    const r = await gw.invoke(tool, {}, 30_000);
    assert.equal(r.status, 200, `${tool} is not registered in the Gateway: ${r.status} ${r.text.slice(0, 500)}`);
    assert.ok(Array.isArray(r.json?.result?.content), r.text.slice(0, 500));
  }
  assert.match(await invokeFails(gw, 'cloud_offload', {}, 30_000), /^❌ cloud_offload requires a `task` parameter/);
  assert.match(await invokeFails(gw, 'mesh_await', {}, 30_000), /^❌ mesh_await: `senders` must be a non-empty array/);

  // ---- stopping the Gateway stops the node (service stop) ---------------
  await gw.stop();
  const code = await gw.exited;
  assert.ok(!existsSync(path.join(meshDir, 'lock')), `the node's lock was not released on Gateway stop (${JSON.stringify(code)})`);
  gw = null;
});

test('OpenClaw Gateway: a node that cannot start fails every tool with "❌ Failed to connect to mesh" and the Gateway keeps running', { timeout: 180_000 }, async () => {
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
      const message = await invokeFails(g, tool, args, 30_000);
      assert.match(message, /^❌ Failed to connect to mesh: cannot create state directory \S+not-a-directory\/mesh: /, message);
    }
    // The Gateway is still up and answers other requests.
    const r = await g.invoke('kars_mesh_no_such_tool', {});
    assert.equal(r.status, 404);
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
