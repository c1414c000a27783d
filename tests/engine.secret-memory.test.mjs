// What the core keeps of the secrets it is given at start, in its linear
// memory (which a host, a debugger or a crash dump can read): a secrets
// review found the identity seed 5 times, its hex and the relay token twice
// each, from copies of the start configuration and stack frames left behind.
// Now: the seed once (the signing key holds it), the relay token once (the
// relay link sends it on every connect), the state key's text and the
// seed's hex not at all. Both on a first start and on one that restores the
// identity from its sealed record.
//
//   bash scripts/node.sh --test tests/engine.secret-memory.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';

// Every instance's memory, as the glue instantiates the core's modules.
const memories = [];
const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = async (...a) => {
  const r = await instantiate(...a);
  const inst = r instanceof WebAssembly.Instance ? r : r.instance;
  for (const v of Object.values(inst.exports)) if (v instanceof WebAssembly.Memory) memories.push(v);
  return r;
};
const { loadCore, memoryStorage } = await import('../js-host/core.js');

const count = (memory, needle) => {
  const mem = Buffer.from(memory.buffer);
  let n = 0;
  for (let i = mem.indexOf(needle); i >= 0; i = mem.indexOf(needle, i + 1)) n++;
  return n;
};

test('after start the core holds the seed once, the relay token once, and neither the state key\'s text nor the seed\'s hex', async () => {
  const storage = memoryStorage();
  const stateKey = Buffer.from(Array.from({ length: 32 }, (_, i) => 0xa0 + i)).toString('base64');
  const seedHex = 'c0ffee' + '5a'.repeat(29);
  const relayToken = 'relay-token-under-test-' + 'q'.repeat(16);
  const config = { relay_url: 'http://127.0.0.1:1', registry_url: 'http://127.0.0.1:2', relay_token: relayToken };

  for (const [when, start] of [
    ['a first start (identity from KARS_IDENTITY_SEED)', { ...config, state_key: stateKey, identity_seed_hex: seedHex }],
    ['a start that restores the identity', { ...config, state_key: stateKey }],
  ]) {
    memories.length = 0;
    const { engine } = await loadCore({ storage, log: () => {} });
    const memory = memories.reduce((a, m) => (m.buffer.byteLength > (a?.buffer.byteLength ?? 0) ? m : a), undefined);
    assert.ok(memory, 'the core\'s memory was found');
    for (const c of engine.handle({ tag: 'start', val: JSON.stringify(start) })) if (c.tag === 'store') storage.set(c.val[0], c.val[1]);
    const r = engine.handle({ tag: 'tool-call', val: { callId: 'id', tool: 'mesh_identity', argsJson: '{}' } });
    assert.match(JSON.stringify(r), /did:mesh:/, `${when}: the engine started`);
    assert.equal(count(memory, Buffer.from(seedHex, 'hex')), 1, `${when}: copies of the identity seed`);
    assert.equal(count(memory, Buffer.from(relayToken)), 1, `${when}: copies of the relay token`);
    assert.equal(count(memory, Buffer.from(stateKey)), 0, `${when}: copies of the state key's text`);
    assert.equal(count(memory, Buffer.from(seedHex)), 0, `${when}: copies of the seed's hex`);
  }
});

test('an identity derived from PINNED_AGENT_IDENTITY_APP_ID is said to be computable by anyone who knows the app id (a review found it silent)', async () => {
  const lines = [];
  const { engine } = await loadCore({ storage: memoryStorage(), log: (level, message) => lines.push([level, message]) });
  const start = { state_key: Buffer.alloc(32, 7).toString('base64'), pinned_app_id: 'contoso-agent-app' };
  const cmds = engine.handle({ tag: 'start', val: JSON.stringify(start) });
  const said = [...lines, ...cmds.filter((c) => c.tag === 'log').map((c) => c.val)].map((l) => (Array.isArray(l) ? l.join(' ') : JSON.stringify(l)));
  const warning = said.find((l) => /PINNED_AGENT_IDENTITY_APP_ID/.test(l));
  assert.ok(warning, `no warning among:\n${said.join('\n')}`);
  assert.match(warning, /warn/i);
  assert.match(warning, /anyone who knows that app id can compute its private key/);
  assert.ok(!warning.includes('contoso-agent-app'), 'the app id itself is not logged');
});
