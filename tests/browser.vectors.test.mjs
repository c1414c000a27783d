// The golden vectors (tests/fixtures/vectors.json) through the component in
// real Chromium: tests/vectors.component.test.mjs, unchanged, runs in a page
// (tests/browser/vectors.html: its Node imports are small shims, its
// independent crypto checks run on @noble), against the same js-host/core.js
// and js-host/gen/ the console loads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { browserMissing, launchProfile, collectPageErrors } from './harness/browser.mjs';
import { startConsoleServer } from '../js-host/console-server.js';

const missing = browserMissing();
let server;
let profile;

before(async () => {
  if (missing) return;
  // No relay or registry is used: the vectors call the toolkit only.
  server = await startConsoleServer({
    port: 0,
    relayUrl: 'http://127.0.0.1:9',
    registryUrl: 'http://127.0.0.1:9',
    extraPrefixes: ['tests/', 'node_modules/@noble/'],
  });
  profile = await launchProfile();
});
after(async () => {
  await profile?.close();
  await server?.close();
});

test('every test of vectors.component.test.mjs passes inside Chromium', { skip: missing ?? false, timeout: 120_000 }, async () => {
  const page = await profile.context.newPage();
  const errors = collectPageErrors(page);
  await page.goto(`${server.origin}/tests/browser/vectors.html`);
  const results = await page.evaluate(() => globalThis.vectorResults);
  const failed = results.filter((r) => !r.ok);
  assert.deepEqual(failed, [], `failed in the browser:\n${failed.map((r) => `${r.name}: ${r.error}`).join('\n')}\n${errors.join('\n')}`);
  // The same tests, by name, as the file runs in Node.
  const tap = spawnSync(process.execPath, ['--test', '--test-reporter=tap', fileURLToPath(new URL('./vectors.component.test.mjs', import.meta.url))], { encoding: 'utf8', env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_TEST_CONTEXT')) });
  const inNode = [...tap.stdout.matchAll(/^# Subtest: (.*)$/gm)].map((m) => m[1].replace(/\\#/g, '#'));
  assert.ok(inNode.length > 30, `node --test listed ${inNode.length} tests:\n${tap.stdout}\n${tap.stderr}`);
  assert.deepEqual(results.map((r) => r.name), inNode);
  assert.ok(results.some((r) => r.name.startsWith('alice_bob.msg0')), 'the Alice/Bob walk-through ran');
  assert.ok(results.some((r) => r.name.startsWith('aead-seal/aead-open')), 'the AEAD check against an independent ChaCha20-Poly1305 ran');
  assert.equal(await page.evaluate(() => navigator.userAgent.includes('Chrome/')), true);
});
