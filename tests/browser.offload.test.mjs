// cloud_offload from the console in real Chromium against a real cluster
// controller (sandboxes running an --exec command) on the real relay and
// registry: files picked from disk (the file input), the page reloaded right
// after the submission and again while the task runs; the offload completes,
// the sandbox saw exactly the picked bytes, and the output downloads with its
// SHA-256 checked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from './harness/servers.mjs';
import { browserMissing, launchProfile } from './harness/browser.mjs';
import { openConsole, untilReady, submitAndRead } from './harness/console-page.mjs';
import { untilRegistered } from './harness/registered.mjs';
import { startConsoleServer } from '../js-host/console-server.js';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TASK_CMD = `"${process.execPath}" "${path.join(HERE, 'fixtures/offload-task.mjs')}"`;
const missing = browserMissing();
let srv;
let server;
let profile;
let ctrl;
const dirs = [];
const tmp = (name) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-browser-offload-${name}-`));
  dirs.push(d);
  return d;
};
const sha = (b) => createHash('sha256').update(b).digest('hex');

before(async () => {
  if (missing) return;
  srv = await startServers();
  server = await startConsoleServer({ port: 0, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  ctrl = await createNode({
    stateDir: tmp('ctrl'), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: 'browser-offload-ctrl', role: 'controller', clusterName: 'browser-lab',
    sandboxes: { dir: tmp('sandboxes'), exec: TASK_CMD, progressMs: 500 }, log: () => {},
  });
  await untilRegistered(ctrl, 'controller');
  await server.warmed;
  profile = await launchProfile();
});
after(async () => {
  await profile?.close();
  await ctrl?.stop().catch(() => {});
  for (const d of dirs) if (d.includes('sandboxes')) await killSandboxes(d, { graceMs: 2000 }).catch(() => {});
  await server?.close();
  await srv?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** The offload view's phase. */
const phaseOf = (page) => page.locator('#offload-phase').textContent();

test('an offload with picked files survives two reloads, completes, and its output downloads with the SHA-256 checked', { skip: missing ?? false, timeout: 240_000 }, async () => {
  let page = await openConsole(profile.context, `${server.url}?name=offload-client`);
  const gen = await ctrl.callTool('pair_generate', { name: 'browser', slots: 1, capabilities: 'offload', expires: '1d' });
  const paired = await submitAndRead(page, '#pair-form', { '#pair-token': gen.details.mesh.token }, '#pair-result');
  assert.match(paired, /^✅ Paired successfully/, paired);

  const work = tmp('work');
  const small = Buffer.from('notes for the sandbox\n');
  const big = randomBytes(1024 * 1024 + 4321); // more than one 512 KiB chunk
  fs.writeFileSync(path.join(work, 'notes.txt'), small);
  fs.writeFileSync(path.join(work, 'data.bin'), big);

  await page.fill('#offload-task', 'summarise the inputs, sleep 4');
  await page.setInputFiles('#offload-files', [path.join(work, 'notes.txt'), path.join(work, 'data.bin')]);
  await page.fill('#offload-timeout', '5');
  await page.click('#offload-btn');
  await page.waitForFunction(() => document.getElementById('offload-result').textContent !== '', null, { timeout: 30_000 });
  const submitted = await page.locator('#offload-result').textContent();
  assert.match(submitted, /^☁️ Offload submitted/, submitted);
  assert.match(submitted, /Files: 2 file\(s\)/);

  // Reload at once: the inputs have not gone yet; the engine reads them again from IndexedDB.
  await page.reload();
  await untilReady(page);
  await page.waitForFunction(() => !document.getElementById('offload-view').hidden, null, { timeout: 30_000 });

  // Reload again while the task runs.
  await page.waitForFunction(() => document.getElementById('offload-phase').textContent === 'running', null, { timeout: 90_000 });
  await page.reload();
  await untilReady(page);

  await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('offload-phase').textContent), null, { timeout: 120_000, polling: 200 }).catch(async (e) => { throw new Error(`${e.message}\n${await page.locator('#offload-view').textContent()}\n${await page.locator('#status').textContent()} ${page.errors.join('; ')}\n${JSON.stringify(await page.evaluate(async () => (await globalThis.karsConsole.node.callTool('offload_status', { wait_seconds: 1, after_events: 0 })).details.mesh))}\nctrl: ${JSON.stringify((await ctrl.callTool('offload_list', {})).details.mesh)}`); });
  assert.equal(await phaseOf(page), 'done', await page.locator('#offload-view').textContent());
  const events = await page.locator('#offload-events').textContent();
  assert.match(events, /running/);
  // Progress was shown as bars, from the counted transfers.
  assert.ok((await page.locator('#offload-progress progress').count()) >= 1, 'progress bars shown');

  // The sandbox saw exactly the picked bytes.
  const inputsJson = await page.evaluate(async () => {
    const n = globalThis.karsConsole.node;
    const m = globalThis.karsConsole.offloadDone;
    const f = m.outputs.find((o) => o.name === 'inputs.json');
    return new TextDecoder().decode(await (await n.getFile(f.path)).arrayBuffer());
  });
  assert.deepEqual(JSON.parse(inputsJson).inputs, [
    { name: 'data.bin', size: big.length, sha256: sha(big) },
    { name: 'notes.txt', size: small.length, sha256: sha(small) },
  ]);

  // Download the output through the page's button: the page checks the SHA-256 first, and so do we.
  const expected = Buffer.alloc(700 * 1024);
  for (let i = 0; i < expected.length; i++) expected[i] = (i * 31 + 7) & 0xff;
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 30_000 }),
    page.getByRole('button', { name: 'Download result.bin' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), 'result.bin');
  const got = fs.readFileSync(await download.path());
  assert.equal(got.length, expected.length);
  assert.equal(sha(got), sha(expected));
  const item = page.locator('#offload-outputs li', { hasText: 'result.bin' });
  assert.match(await item.textContent(), new RegExp(sha(expected)));
  assert.match(await item.textContent(), /✓ SHA-256 checked, downloaded/);

  // The outputs stay downloadable after another reload (kept in IndexedDB), the inputs are gone.
  page = await reopen(page);
  await page.waitForFunction(() => document.querySelectorAll('#files-list li code').length >= 2);
  assert.match(await page.locator('#files-list').textContent(), /result\.bin/);
  const inputsLeft = await page.evaluate(() => globalThis.karsConsole.node.eraseInputs([]));
  assert.equal(inputsLeft, 0, 'the picked inputs were removed once the offload ended');
});

async function reopen(page) {
  await page.reload();
  await untilReady(page);
  return page;
}
