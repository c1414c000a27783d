// The README's demo (scripts/demo.mjs) runs to the end: cluster up, two
// plugin agents, pairing, a message each way, an offload through done,
// cluster down. Guards the walk-through a new user runs first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('npm run demo completes and shows each step', { timeout: 180_000 }, () => {
  const script = fileURLToPath(new URL('../scripts/demo.mjs', import.meta.url));
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 170_000 });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  for (const want of [
    /Paired successfully with kars cluster "demo-lab"/,
    /✓ Message sent to bob \(did:mesh:[0-9a-f]{7}\.\.\.\) \(E2E encrypted\)/,
    /evidence: encrypted/,
    /alice mesh_await → all_received/,
    /Sure, on it\./,
    /acknowledged +the sandbox said hello/,
    /done +finished with 1 output file\(s\)/,
    /│ - numbers\.csv — 37 bytes — sha256 [0-9a-f]{64}/,
    /Demo complete\./,
  ]) assert.match(r.stdout, want);
  assert.ok(!/azcp_1_[A-Za-z0-9_-]{20,}/.test(r.stdout), 'the pairing token is not printed in full');
});
