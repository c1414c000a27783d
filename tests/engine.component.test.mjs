// The engine export through the built component: identity creation on first
// start, persistence through `store` commands, reload on restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCore, memoryStorage } from '../js-host/core.js';

const key = Buffer.alloc(32, 7).toString('base64');

async function start(storage, stateKey = key) {
  const logs = [];
  const core = await loadCore({ storage, log: (l, m) => logs.push(`${l}: ${m}`) });
  const cmds = core.engine.handle({ tag: 'start', val: JSON.stringify({ state_key: stateKey }) });
  for (const c of cmds) if (c.tag === 'store') storage.set(c.val[0], c.val[1]);
  return { core, cmds, logs };
}

function whoami(core) {
  const [res] = core.engine.handle({ tag: 'tool-call', val: { callId: 'c1', tool: 'mesh_identity', argsJson: '{}' } });
  assert.equal(res.tag, 'tool-result');
  assert.equal(res.val.callId, 'c1');
  return JSON.parse(res.val.resultJson);
}

test('first start creates and stores a sealed identity; restart reloads it', async () => {
  const storage = memoryStorage();
  const first = await start(storage);
  // The identity, after the mark that this state's records are all bound
  // to their keys (seal version 2; an older record put back is refused).
  assert.deepEqual(first.cmds.map((c) => [c.tag, c.val[0]]), [['store', 'meta/seal-v2'], ['store', 'identity']]);
  const sealed = storage.get('identity');
  assert.equal(sealed[0], 2, 'sealed record version byte');
  const a = whoami(first.core);
  assert.match(a.details.mesh.did, /^did:mesh:[0-9a-f]{32}$/);
  assert.match(a.content[0].text, /DID: did:mesh:/);

  const second = await start(storage);
  assert.deepEqual(second.cmds, [], 'nothing new to store on restart');
  assert.equal(whoami(second.core).details.mesh.did, a.details.mesh.did);
});

test('a wrong state key is reported, and the stored identity is left alone', async () => {
  const storage = memoryStorage();
  await start(storage);
  const before = Buffer.from(storage.get('identity'));
  const other = Buffer.alloc(32, 9).toString('base64');
  const { core, cmds, logs } = await start(storage, other);
  assert.deepEqual(cmds, []);
  assert.ok(logs.some((l) => l.startsWith('error:') && l.includes('Restore the state key')), logs.join('\n'));
  assert.deepEqual(Buffer.from(storage.get('identity')), before);
  const r = whoami(core);
  assert.match(r.content[0].text, /^❌ .*not been started/);
  assert.ok(!JSON.stringify(r).includes(other), 'the key never appears in output');
});

test('unknown tools get a clear error naming what exists', async () => {
  const { core } = await start(memoryStorage());
  const [res] = core.engine.handle({ tag: 'tool-call', val: { callId: 'x', tool: 'nope', argsJson: '{}' } });
  const r = JSON.parse(res.val.resultJson);
  assert.match(r.content[0].text, /unknown tool "nope"/);
  assert.equal(r.details.mesh.error.includes('mesh_identity'), true);
});
