// The console with a relay that needs a token (AGENTMESH_RELAY_TOKEN), in real
// Chromium against the real relay and registry: the page opened at the
// address `kars-mesh console` prints (…#key=…) gets the token and connects;
// config.json gives the token to no request without that key (another local
// user, a page opened at the bare address), and the page says what to open.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServers } from './harness/servers.mjs';
import { browserMissing, launchProfile } from './harness/browser.mjs';
import { openConsole, untilReady } from './harness/console-page.mjs';
import { startConsoleServer } from '../js-host/console-server.js';

const TOKEN = 'console-relay-token-4f1c9a';
const missing = browserMissing();
const skip = missing ?? false;
let srv;
let server;
const profiles = [];

before(async () => {
  if (missing) return;
  srv = await startServers({ relayEnv: { AGENTMESH_RELAY_TOKEN: TOKEN } });
  server = await startConsoleServer({ port: 0, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, relayToken: TOKEN });
  await server.warmed;
});
after(async () => {
  for (const p of profiles) await p.close();
  await server?.close();
  await srv?.stop();
});

test('the relay token goes only to the page opened at the printed address, which connects with it', { skip, timeout: 120_000 }, async () => {
  const key = new URL(server.openUrl).hash.replace(/^#key=/, '');
  assert.match(key, /^[A-Za-z0-9_-]{32}$/, server.openUrl);
  const config = `${server.consoleUrl}config.json`;
  for (const headers of [{}, { 'x-kars-console-key': 'x'.repeat(32) }, { 'x-kars-console-key': key.slice(0, -1) }]) {
    const r = await fetch(config, { headers });
    const body = await r.text();
    assert.equal(r.status, 403, body);
    assert.ok(!body.includes(TOKEN), 'no token without the key');
    assert.match(body, /open that address/);
  }
  const given = await (await fetch(config, { headers: { 'x-kars-console-key': key } })).json();
  assert.equal(given.relay_token, TOKEN);

  // A page at the bare address: told what to open, no engine.
  const bare = await launchProfile();
  profiles.push(bare);
  const lost = await bare.context.newPage();
  await lost.goto(server.url);
  await lost.waitForFunction(() => document.getElementById('status').dataset.state === 'stopped');
  assert.match(await lost.locator('#notice').textContent(), /relay needs a token, which the server gives only to the page opened at the address `kars-mesh console` printed/);
  assert.equal(lost.workers().length, 0);

  // The printed address: the engine connects through the token-guarded
  // relay and registers; the key leaves the address bar, and a reload
  // (without it) still works.
  const p = await launchProfile();
  profiles.push(p);
  const page = await openConsole(p.context, `${server.openUrl.replace('/#', '/?name=token-page#')}`);
  assert.equal(new URL(page.url()).hash, '', 'the key is not left in the address bar');
  await page.reload();
  await untilReady(page);
  assert.equal(await page.locator('#id-registered').textContent(), 'yes');
});
