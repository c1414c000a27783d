// Faults of the console in real Chromium against the real relay and
// registry: the relay drops (restarted: every queued frame lost) while the
// console sends; a tab closed right after "Send". Each with a clear message
// and nothing lost. (A full storage quota: tests/browser.quota.test.mjs, with
// Chromium's profile on a small disk of its own.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { browserMissing, launchProfile } from './harness/browser.mjs';
import { openConsole, nodeHas, untilNodeHas } from './harness/console-page.mjs';
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
