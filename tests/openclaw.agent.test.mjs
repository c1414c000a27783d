// One full agent turn in the REAL OpenClaw (`openclaw agent --local`, Node 24)
// with a scripted OpenAI-compatible model on loopback (tests/harness/stub-llm.mjs)
// instead of an LLM: the model sees the 8 kars-mesh tools with their original
// descriptions and the mesh-federation skill, calls mesh_inbox, the plugin
// starts the node on demand, and the engine's answer reaches the model. The
// process exits on its own afterwards (a lazily started node keeps nothing alive).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeOpenClawHome } from './harness/openclaw.mjs';
import { startStubLlm } from './harness/stub-llm.mjs';
import { createNode } from '../js-host/node-host.js';
import { TOOLS } from '../js-host/tools.js';

const cleanups = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const NOWHERE = 'http://127.0.0.1:9'; // no relay or registry: mesh_inbox is answered locally

test('openclaw agent --local: the model calls mesh_inbox and gets the engine\'s answer', { timeout: 180_000 }, async () => {
  // What a fresh node answers for an empty inbox.
  const refDir = mkdtempSync(path.join(tmpdir(), 'kars-oc-ref-'));
  cleanups.push(() => rmSync(refDir, { recursive: true, force: true }));
  const ref = await createNode({ stateDir: refDir, relayUrl: NOWHERE, registryUrl: NOWHERE, log: () => {} });
  const want = (await ref.callTool('mesh_inbox', {})).content[0].text;
  await ref.stop();

  const stub = await startStubLlm({ toolName: 'mesh_inbox', toolArgs: {}, replyPrefix: 'TOOL SAID: ' });
  cleanups.push(() => stub.close());
  const h = makeOpenClawHome({
    pluginConfig: (base) => ({ state_dir: path.join(base, 'mesh-state'), relay_url: NOWHERE, registry_url: NOWHERE }),
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

  const r = await h.run(['agent', '--local', '--agent', 'main', '--session-id', 'mesh-1', '--message', 'check my mesh inbox', '--json'], { timeoutMs: 150_000 });
  assert.equal(r.code, 0, `${r.stdout.slice(0, 2000)}\n${r.stderr.slice(-3000)}`);
  assert.equal(r.json.payloads[0].text, `TOOL SAID: ${want}`);
  assert.deepEqual(r.json.meta.agentMeta.terminalReceipt.successfulToolNames, ['mesh_inbox']);

  // The first model request offered the 8 tools with the original descriptions,
  // and the system prompt lists the skill.
  const first = stub.requests.find((q) => q.url.endsWith('/chat/completions'));
  const offered = new Map((first.body.tools ?? []).map((t) => [t.function.name, t.function]));
  for (const def of TOOLS) {
    assert.ok(offered.has(def.name), `${def.name} not offered to the model: ${[...offered.keys()].join(', ')}`);
    assert.equal(offered.get(def.name).description, def.description);
    assert.deepEqual(offered.get(def.name).parameters.required ?? [], def.parameters.required ?? []);
  }
  const system = first.body.messages.filter((m) => m.role === 'system').map((m) => (typeof m.content === 'string' ? m.content : JSON.stringify(m.content))).join('\n');
  assert.match(system, /mesh-federation/);
});
