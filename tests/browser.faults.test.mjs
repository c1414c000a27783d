// Faults of the console in real Chromium against the real relay and
// registry: the relay drops (restarted: every queued frame lost) while the
// console sends; a tab closed right after "Send"; a display name that cannot
// be sent to. Each with a clear message and nothing lost. (A full storage quota: tests/browser.quota.test.mjs, with
// Chromium's profile on a small disk of its own.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startServers } from './harness/servers.mjs';
import { browserMissing, launchProfile } from './harness/browser.mjs';
import { openConsole, nodeHas, untilNodeHas, untilReady, didOf } from './harness/console-page.mjs';
import { untilRegistered } from './harness/registered.mjs';
import { startConsoleServer } from '../js-host/console-server.js';
import { createNode } from '../js-host/node-host.js';

const missing = browserMissing();
const skip = missing ?? false;
let srv;
let server;
let profile;
let peer;
let dir;

before(async () => {
  if (missing) return;
  srv = await startServers();
  server = await startConsoleServer({ port: 0, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-browser-faults-'));
  peer = await createNode({ stateDir: dir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: 'faults-peer', log: () => {} });
  await untilRegistered(peer, 'peer');
  await server.warmed;
  profile = await launchProfile();
});
after(async () => {
  await profile?.close();
  await peer?.stop().catch(() => {});
  await server?.close();
  await srv?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const peerHas = (text) => nodeHas(peer, text);
const untilPeerHas = (text, ms) => untilNodeHas(peer, text, ms);

test('the relay drops: the console says so, queues what is sent meanwhile, reconnects and delivers it', { skip, timeout: 120_000 }, async () => {
  const page = await openConsole(profile.context, `${server.url}?name=faults-console`);
  // A session first, so the queued message needs only the relay.
  await page.evaluate((to) => globalThis.karsConsole.node.callTool('mesh_send', { to, message: 'before the drop' }), peer.did);
  await untilPeerHas('before the drop');

  const restarting = srv.restartRelay();
  await page.waitForFunction(() => document.getElementById('status').dataset.state === 'down', null, { timeout: 30_000 });
  assert.match(await page.locator('#status').textContent(), /Relay connection lost.*reconnecting.*queued/s);
  await page.fill('#send-to', peer.did);
  await page.fill('#send-text', 'sent while the relay was down');
  await page.click('#send-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('send-result').textContent !== '');
  const sent = await page.locator('#send-result').textContent();
  assert.match(sent, /^✓ Message (queued|sent)/, sent);
  await restarting;
  await page.waitForFunction(() => document.getElementById('status').dataset.state === 'connected', null, { timeout: 60_000 });
  const got = await untilPeerHas('sent while the relay was down', 60_000);
  assert.equal(got.length, 1);
  await page.close();
});

test('a tab closed right after Send: the message goes once, when the console is opened again', { skip, timeout: 120_000 }, async () => {
  let page = await openConsole(profile.context, `${server.url}?name=faults-console`);
  await page.fill('#send-to', peer.did);
  await page.fill('#send-text', 'the tab closed under this one');
  await page.click('#send-form button[type=submit]');
  await page.close({ runBeforeUnload: false });
  page = await openConsole(profile.context, `${server.url}?name=faults-console`);
  const got = await untilPeerHas('the tab closed under this one', 60_000);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await peerHas('the tab closed under this one')).length, 1, 'delivered exactly once');
  assert.equal(got[0].evidence, 'encrypted');
  assert.equal(await page.evaluate(() => localStorage.getItem('kars-mesh:default:pending-sends')), null, 'nothing left pending');
  await page.close();
});

test('a display name that cannot be sent to is refused where it is typed; one stored before stops the start, and the page asks for another, identity kept', { skip, timeout: 120_000 }, async () => {
  const page = await profile.context.newPage();
  await page.goto(`${server.url}?profile=named`);
  await page.waitForFunction(() => globalThis.karsConsole?.state === 'setup');
  const setupSays = async (value) => {
    await page.fill('#setup-name', value);
    await page.click('#setup button[type=submit]');
    await page.waitForFunction(() => document.getElementById('setup-result').textContent !== '');
    return page.locator('#setup-result').textContent();
  };
  assert.match(await setupSays('bob the builder'), /^❌ That cannot be a display name \(it contains a space or a control character: a name is one word, such as alice or laptop-claw\)\.$/);
  assert.equal(await page.evaluate(() => globalThis.karsConsole.state), 'setup', 'still asking');
  assert.equal(page.workers().length, 0, 'no engine started with it');
  assert.equal(await page.evaluate(() => localStorage.getItem('kars-mesh:named:name')), null, 'nothing kept');
  await page.fill('#setup-name', 'named-one');
  await page.click('#setup button[type=submit]');
  await untilReady(page);
  const did = await didOf(page);

  // The identity's name form refuses it too, and the engine goes on.
  await page.fill('#name-input', 'named two');
  await page.click('#name-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('name-result').textContent !== '');
  assert.match(await page.locator('#name-result').textContent(), /^❌ That cannot be a display name \(it contains a space.*\)\. Nothing was changed\.$/);
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'connected');
  assert.equal(await page.evaluate(() => localStorage.getItem('kars-mesh:named:name')), 'named-one');

  // A name kept by an older page: the engine refuses it at start; the page
  // says why and asks for another, and the same identity starts with it.
  await page.evaluate(() => localStorage.setItem('kars-mesh:named:name', 'named two'));
  await page.reload();
  await page.waitForFunction(() => globalThis.karsConsole?.state === 'setup', null, { timeout: 30_000 });
  const intro = await page.locator('#setup-intro').textContent();
  assert.match(intro, /^The engine did not start: the engine cannot start with these settings: the name "named two" cannot be sent to \(names contain no spaces or control characters\).*The identity of profile "named" is kept; give another display name \(or none\) to start it\.$/s, intro);
  assert.equal(await page.inputValue('#setup-name'), 'named two', 'the refused name is there to correct');
  await page.fill('#setup-name', 'named-two');
  await page.click('#setup button[type=submit]');
  await page.waitForLoadState('load');
  await untilReady(page);
  assert.equal(await didOf(page), did, 'the same identity');
  assert.equal(await page.locator('#id-name').textContent(), 'named-two');
  await page.close();
});

test('a relay that never answered is named with its address, not called "lost"', { skip, timeout: 60_000 }, async () => {
  const port = await freePort();
  const nowhere = await startConsoleServer({ port: 0, relayUrl: `http://127.0.0.1:${port}`, registryUrl: srv.registryUrl });
  try {
    const page = await profile.context.newPage();
    await page.goto(`${nowhere.url}?name=faults-nowhere`);
    await page.waitForFunction(() => document.getElementById('status').dataset.state === 'down', null, { timeout: 30_000 });
    const status = (await page.locator('#status').textContent()).trim();
    assert.match(status, new RegExp(`^Cannot reach the relay at http://127\\.0\\.0\\.1:${port}.*; retrying\\. Messages you send meanwhile are queued`), status);
    assert.doesNotMatch(status, /lost/);
    await page.close();
  } finally {
    await nowhere.close();
  }
});
