// One full agent turn in the REAL OpenClaw (`openclaw agent --local`, Node 24)
// against the REAL AgentMesh relay and registry, with a scripted
// OpenAI-compatible model on loopback (tests/harness/stub-llm.mjs) instead of
// an LLM. The model sees the 8 kars-mesh tools with their original
// descriptions and the mesh-federation skill, then calls
//   1. mesh_send {to: "bob", ...}: bob is a second engine node (createNode)
//      registered under that name; the plugin starts the node on demand;
//   2. mesh_inbox {block_until_message: true}: bob has read the message and
//      replied meanwhile (the stub holds the model until he has);
// and both tool results reach the model. Nothing compares a text that holds a
// time (mesh_inbox's diagnostics carry `counters_since`).
// A second turn makes two calls the engine refuses: the model gets OpenClaw's
// failed-tool result ({status:"error", tool, error: <the ❌ text>}) and the
// run counts neither call as successful.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeOpenClawHome } from './harness/openclaw.mjs';
import { startServers } from './harness/servers.mjs';
import { startStubLlm } from './harness/stub-llm.mjs';
import { createNode } from '../js-host/node-host.js';
import { TOOLS } from '../js-host/tools.js';
import { untilRegistered } from './harness/registered.mjs';

const cleanups = [];
let srv;
before(async () => {
  srv = await startServers();
  cleanups.push(() => srv.stop());
});
after(async () => { for (const c of cleanups.reverse()) await c(); });

const MESSAGE = 'hello bob, this is claw from an agent turn';
const REPLY = 'hi claw, bob got your message';

async function registered(n) {
  await untilRegistered(n, 'node');
}

const textOf = (content) => (typeof content === 'string' ? content : (content ?? []).map((c) => c?.text ?? '').join(''));

test('openclaw agent --local: the model calls mesh_send then mesh_inbox; the peer gets the message and its reply reaches the model', { timeout: 180_000 }, async () => {
  const bobDir = mkdtempSync(path.join(tmpdir(), 'kars-oc-bob-'));
  cleanups.push(() => rmSync(bobDir, { recursive: true, force: true }));
  const bob = await createNode({ stateDir: bobDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: 'bob', log: () => {} });
  cleanups.push(() => bob.stop().catch(() => {}));
  await registered(bob);

  // Bob answers whatever reaches him: waits for the message, then replies to its sender.
  const bobSide = (async () => {
    const got = await bob.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 150 }, { timeoutMs: 160_000 });
    const m = got.details.mesh.messages?.[0];
    if (!m) throw new Error(`bob received nothing: ${got.content[0].text}`);
    const reply = await bob.callTool('mesh_send', { to: m.from, message: REPLY }, { timeoutMs: 40_000 });
    return { got, reply };
  })();
  bobSide.catch(() => {}); // awaited below; never an unhandled rejection

  const stub = await startStubLlm({
    script: [
      { name: 'mesh_send', args: { to: 'bob', message: MESSAGE } },
      { name: 'mesh_inbox', args: { block_until_message: true, timeout_seconds: 60 } },
    ],
    replyPrefix: 'TOOL SAID: ',
    // The model asks for mesh_inbox only once bob has replied (a reply sent
    // "within the turn"); block_until_message covers the relay's delivery time.
    beforeStep: async (i) => { if (i === 1) await bobSide; },
  });
  cleanups.push(() => stub.close());
  const h = makeOpenClawHome({
    pluginConfig: (base) => ({
      state_dir: path.join(base, 'mesh-state'),
      relay_url: srv.relayUrl,
      registry_url: srv.registryUrl,
      display_name: 'claw',
      timeouts: { start_seconds: 30, tool_seconds: 90 },
    }),
    config: {
      models: {
        providers: {
          stub: {
            baseUrl: stub.baseUrl,
            api: 'openai-completions',
            apiKey: 'x',
            models: [{ id: 'stub-1', name: 'Stub', reasoning: false, input: ['text'], cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 }, contextWindow: 128000, maxTokens: 4096 }],
          },
        },
      },
      agents: { defaults: { model: { primary: 'stub/stub-1' } } },
      tools: { toolSearch: false }, // the tools' own schemas, not Tool Search
    },
  });
  cleanups.push(() => h.cleanup());

  const r = await h.run(['agent', '--local', '--agent', 'main', '--session-id', 'mesh-1', '--message', 'say hello to bob on the mesh and read his answer', '--json'], { timeoutMs: 150_000 });
  assert.equal(r.code, 0, `${r.stdout.slice(0, 2000)}\n${r.stderr.slice(-3000)}`);
  assert.deepEqual(r.json.meta.agentMeta.terminalReceipt.successfulToolNames, ['mesh_send', 'mesh_inbox']);

  // ---- bob got the message, end-to-end encrypted, from the agent's node ----
  const { got, reply } = await bobSide;
  assert.equal(got.details.mesh.messages.length, 1, JSON.stringify(got.details.mesh));
  const inbound = got.details.mesh.messages[0];
  assert.equal(inbound.evidence, 'encrypted');
  assert.equal(inbound.payload.content, MESSAGE);
  const clawDid = inbound.from;
  assert.match(clawDid, /^did:mesh:[0-9a-f]{32}$/);
  assert.doesNotMatch(reply.content[0].text, /^❌/, reply.content[0].text);
  // Bob's inbox still shows it (peek by default).
  const bobInbox = await bob.callTool('mesh_inbox', { unread_only: false });
  assert.deepEqual(bobInbox.details.mesh.messages.map((m) => [m.from, m.evidence, m.payload.content]), [[clawDid, 'encrypted', MESSAGE]]);
  // The agent registered under its display_name.
  const reg = await (await fetch(`${srv.registryUrl}/v1/discover?capability=claw`)).json();
  assert.deepEqual(reg.results.map((a) => a.did), [clawDid]);

  // ---- both tool results reached the model ------------------------------
  const chats = stub.requests.filter((q) => q.url.endsWith('/chat/completions'));
  const last = chats.at(-1).body.messages;
  const results = last.filter((m) => m.role === 'tool').map((m) => textOf(m.content));
  assert.equal(results.length, 2, JSON.stringify(last).slice(0, 3000));
  const [sentText, inboxText] = results;
  assert.equal(sentText, `✓ Message sent to bob (${bob.did.slice(0, 16)}...) (E2E encrypted)`);
  assert.match(inboxText, /^📬 1 of 1 message\(s\) \(1 unread\):\n {2}1\. \[did:mesh:[0-9a-f]{32}\] \(·new\) /, inboxText);
  assert.ok(inboxText.includes(`[${bob.did}]`), inboxText);
  assert.ok(inboxText.includes(REPLY), inboxText);
  assert.match(inboxText, /\n\nDiagnostics: \{.*"received_total":1.*\}$/s, inboxText);
  // ... and the model's final answer carried them back.
  const final = r.json.payloads.map((p) => p.text ?? '').join('\n');
  assert.ok(final.startsWith(`TOOL SAID: ${sentText}\n---\n📬 1 of 1 message(s)`), final);
  assert.ok(final.includes(REPLY), final);

  // The first model request offered the 8 tools with the original descriptions,
  // and the system prompt lists the skill.
  const offered = new Map((chats[0].body.tools ?? []).map((t) => [t.function.name, t.function]));
  for (const def of TOOLS) {
    assert.ok(offered.has(def.name), `${def.name} not offered to the model: ${[...offered.keys()].join(', ')}`);
    assert.equal(offered.get(def.name).description, def.description);
    assert.deepEqual(offered.get(def.name).parameters.required ?? [], def.parameters.required ?? []);
  }
  const system = chats[0].body.messages.filter((m) => m.role === 'system').map((m) => textOf(m.content)).join('\n');
  assert.match(system, /mesh-federation/);
});

test('openclaw agent --local: a failed call reaches the model as a failed tool result with the original\'s ❌ text, and the run does not count it as successful', { timeout: 180_000 }, async () => {
  // mesh_inbox with a name where a DID belongs, then mesh_pair with a
  // token-like string: both pass the tools' schemas (OpenClaw checks those
  // before calling), and the engine refuses them.
  const badToken = `azcp_1_${'Z'.repeat(40)}`;
  const stub = await startStubLlm({
    script: [
      { name: 'mesh_inbox', args: { from: 'bob' } },
      { name: 'mesh_pair', args: { token: badToken } },
    ],
    replyPrefix: 'TOOL SAID: ',
  });
  cleanups.push(() => stub.close());
  const h = makeOpenClawHome({
    pluginConfig: (base) => ({
      state_dir: path.join(base, 'mesh-state'),
      relay_url: srv.relayUrl,
      registry_url: srv.registryUrl,
      timeouts: { start_seconds: 30, tool_seconds: 60 },
    }),
    config: {
      models: {
        providers: {
          stub: {
            baseUrl: stub.baseUrl,
            api: 'openai-completions',
            apiKey: 'x',
            models: [{ id: 'stub-1', name: 'Stub', reasoning: false, input: ['text'], cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 }, contextWindow: 128000, maxTokens: 4096 }],
          },
        },
      },
      agents: { defaults: { model: { primary: 'stub/stub-1' } } },
      tools: { toolSearch: false },
    },
  });
  cleanups.push(() => h.cleanup());

  const r = await h.run(['agent', '--local', '--agent', 'main', '--session-id', 'mesh-fail', '--message', 'send something to bob, then pair', '--json'], { timeoutMs: 150_000 });
  assert.equal(r.code, 0, `${r.stdout.slice(0, 2000)}\n${r.stderr.slice(-3000)}`);
  // Before this contract, both calls were "successful" (HTTP 200 ok:true with a ❌ text).
  const receipt = r.json.meta.agentMeta.terminalReceipt;
  assert.deepEqual(receipt.successfulToolNames ?? [], [], JSON.stringify(receipt));
  // OpenClaw logs each failed call with its message (and the arguments, secrets masked).
  assert.match(r.stderr, /\[tools\] mesh_inbox failed: ❌ mesh_inbox: `from` must be a did:mesh: DID/);
  assert.match(r.stderr, /\[tools\] mesh_pair failed: ❌ Invalid pairing token\./);

  // What the model saw: OpenClaw's failed-tool result, the engine's text as its error.
  const chats = stub.requests.filter((q) => q.url.endsWith('/chat/completions'));
  const results = chats.at(-1).body.messages.filter((m) => m.role === 'tool').map((m) => textOf(m.content));
  assert.equal(results.length, 2, JSON.stringify(chats.at(-1).body.messages).slice(0, 3000));
  const [inboxFailed, pairFailed] = results.map((t) => {
    try { return JSON.parse(t); } catch { assert.fail(`not OpenClaw's failed-tool result: ${t}`); }
  });
  assert.deepEqual(inboxFailed, {
    status: 'error',
    tool: 'mesh_inbox',
    error: '❌ mesh_inbox: `from` must be a did:mesh: DID (did:mesh: + 32 lowercase hex) or a base58 AMID; use `discover` to find an agent\'s DID.',
  });
  assert.equal(pairFailed.status, 'error');
  assert.equal(pairFailed.tool, 'mesh_pair');
  assert.match(pairFailed.error, /^❌ Invalid pairing token\. /);
  // The token-like argument reached neither the model's tool result nor the run's output.
  assert.ok(!results.join('\n').includes(badToken), results.join('\n'));
  assert.ok(!r.stderr.includes(badToken) && !r.stdout.includes(badToken), 'the token reached the agent run\'s output');
});
