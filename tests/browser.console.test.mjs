// The agent console in real Chromium against the real relay and registry
// (tests/harness/servers.mjs), served by `kars-mesh console`'s server: two
// console agents in two browsers (each its own fresh profile) pair with a
// cluster's tokens, discover each other, and exchange end-to-end encrypted
// messages both ways (live inbox, mesh_await); a console agent and a CLI agent
// (bin/kars-mesh) do the same; a second tab of the same identity starts no
// engine and says so, and takes over when the first closes; the page is
// reloaded mid-conversation and its sessions and read marks survive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { runCli } from './harness/cluster.mjs';
import { browserMissing, launchProfile } from './harness/browser.mjs';
import { openConsole, untilReady, didOf, submitAndRead, sendFromConsole, untilInboxShows } from './harness/console-page.mjs';
import { startConsoleServer } from '../js-host/console-server.js';
import { createNode } from '../js-host/node-host.js';
import { untilRegistered } from './harness/registered.mjs';

const missing = browserMissing();
const skip = missing ?? false;
let srv;
let server;
const profiles = [];
const nodes = [];
const dirs = [];
let alice; // page
let bob; // page
let aliceProfile;

const tmp = (name) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-browser-${name}-`));
  dirs.push(d);
  return d;
};

before(async () => {
  if (missing) return;
  srv = await startServers();
  server = await startConsoleServer({ port: 0, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  await server.warmed;
});

after(async () => {
  for (const p of profiles) await p.close();
  for (const n of nodes) await n.stop().catch(() => {});
  await server?.close();
  await srv?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function newProfile() {
  const p = await launchProfile();
  profiles.push(p);
  return p;
}

const cli = (state, args, opts = {}) =>
  runCli(['--state', state, '--relay', srv.relayUrl, '--registry', srv.registryUrl, ...args], { home: state, timeoutMs: 90_000, ...opts });

test('two console agents pair, discover each other and exchange encrypted messages both ways', { skip, timeout: 180_000 }, async () => {
  aliceProfile = await newProfile();
  const bobProfile = await newProfile();
  // A new identity: the console asks for its name before it starts (the registry keeps the first one).
  alice = await aliceProfile.context.newPage();
  await alice.goto(server.url);
  await alice.waitForFunction(() => globalThis.karsConsole?.state === 'setup');
  assert.equal(alice.workers().length, 0, 'no engine before the name is chosen');
  await alice.fill('#setup-name', 'console-alice');
  await alice.click('#setup button[type=submit]');
  await untilReady(alice);
  // ... or takes it from the address.
  bob = await openConsole(bobProfile.context, `${server.url}?name=console-bob`);
  assert.equal(await alice.locator('#id-name').textContent(), 'console-alice');
  assert.equal(await bob.locator('#id-name').textContent(), 'console-bob');
  const [aliceDid, bobDid] = [await didOf(alice), await didOf(bob)];
  const pageLog = [];
  for (const page of [alice, bob]) page.on('console', (m) => pageLog.push(m.text()));
  assert.match(aliceDid, /^did:mesh:[0-9a-f]{32}$/);
  assert.notEqual(aliceDid, bobDid);
  assert.match(await alice.locator('#id-amid').textContent(), /^[1-9A-HJ-NP-Za-km-z]+$/);

  // Pairing with a token from a cluster's controller.
  const ctrl = await createNode({ stateDir: tmp('ctrl'), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: 'browser-lab-ctrl', role: 'controller', clusterName: 'browser-lab', log: () => {} });
  nodes.push(ctrl);
  await untilRegistered(ctrl, 'controller');
  const tokens = [];
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    const gen = await ctrl.callTool('pair_generate', { name, slots: 1, capabilities: 'offload', expires: '1d' });
    tokens.push(gen.details.mesh.token);
    const text = await submitAndRead(page, '#pair-form', { '#pair-token': gen.details.mesh.token }, '#pair-result');
    assert.match(text, /^✅ Paired successfully/, text);
    assert.match(text, /browser-lab/);
    // In the page's words, not tool calls (js-host/tool-words.js PAGE_WORDS).
    assert.match(text, /You can now offload tasks to the cluster \(under "Offload a task"\)\./, text);
    assert.doesNotMatch(text, /cloud_offload|mesh_[a-z]+|offload_status/, text);
    assert.equal(await page.locator('#pair-token').inputValue(), '', 'the token is not left in the form');
  }
  // What a new user meets at 360 px (the profiles' viewport): no horizontal
  // scroll, every field labelled and every button named, the setup form gone
  // once started; the pairing token nowhere in the page, its storage or its console.
  for (const page of [alice, bob]) {
    const seen = await page.evaluate(() => ({
      overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
      wide: [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).map((e) => `${e.tagName}#${e.id} ${e.textContent.slice(0, 40)}`).slice(0, 5),
      unlabeled: [...document.querySelectorAll('input, textarea, select')].filter((i) => !i.labels?.length && !i.getAttribute('aria-label')).map((i) => i.id || i.name),
      unnamed: [...document.querySelectorAll('button')].filter((b) => !(b.textContent.trim() || b.getAttribute('aria-label'))).length,
      setupShown: getComputedStyle(document.getElementById('setup')).display !== 'none',
      kept: JSON.stringify({ ...localStorage }) + document.body.innerText,
    }));
    assert.equal(page.viewportSize().width, 360);
    assert.equal(seen.overflow, 0, `no horizontal scroll at 360 px: ${JSON.stringify(seen.wide)}`);
    assert.deepEqual(seen.unlabeled, [], 'every field has a label');
    assert.equal(seen.unnamed, 0, 'every button has a name');
    assert.equal(seen.setupShown, false, 'the new-identity form is hidden once the engine runs');
    for (const token of tokens) assert.ok(!seen.kept.includes(token.slice(8, 40)), 'the pairing token is not kept or shown after pairing');
  }
  for (const token of tokens) assert.ok(!pageLog.some((l) => l.includes(token.slice(8, 40))), 'the pairing token is not logged in the page console');
  const bad = await submitAndRead(alice, '#pair-form', { '#pair-token': 'azcp_1_notatoken' }, '#pair-result');
  assert.match(bad, /^❌/, 'a bad token is refused with a reason');

  // Discover: bob by the capability his name registered.
  const found = await submitAndRead(alice, '#discover-form', { '#discover-cap': 'console-bob' }, '#discover-result');
  assert.match(found, /^🌐 1 agent\(s\):/, found);
  const card = alice.locator('#discover-list li', { hasText: bobDid });
  assert.equal(await card.count(), 1);
  await card.locator('button').click();
  assert.equal(await alice.locator('#send-to').inputValue(), bobDid);

  // alice -> bob (by DID), shown live in bob's inbox; bob replies by name while alice waits (mesh_await).
  const sent = await sendFromConsole(alice, bobDid, 'hello bob, from a browser');
  assert.match(sent, /^✓ Message sent to did:mesh:[0-9a-f]{32} \(E2E encrypted\)/, sent);
  const shown = await untilInboxShows(bob, 'hello bob, from a browser');
  assert.match(shown, /new/);
  assert.match(shown, /end-to-end encrypted/);
  assert.match(shown, new RegExp(aliceDid));

  await alice.fill('#await-senders', 'console-bob');
  await alice.fill('#await-timeout', '60');
  await alice.click('#await-btn');
  await alice.waitForFunction(() => document.getElementById('await-result').textContent.startsWith('Waiting for'));
  await bob.locator('#inbox-list li', { hasText: 'hello bob' }).getByRole('button', { name: 'Reply' }).click();
  assert.equal(await bob.locator('#send-to').inputValue(), aliceDid);
  const reply = await sendFromConsole(bob, 'console-alice', 'hi alice, bob here');
  assert.match(reply, /^✓ Message sent to console-alice/, reply);
  await alice.waitForFunction(() => document.getElementById('await-result').dataset.status, null, { timeout: 60_000 });
  assert.equal(await alice.locator('#await-result').getAttribute('data-status'), 'all_received');
  const awaited = await alice.locator('#await-result').textContent();
  assert.match(awaited, /^✓ Every sender answered after \d+ s: console-bob \(did:mesh:[0-9a-f]{11}…\)\. Their messages are in the inbox below\.\n\n\{/, awaited);
  const toolText = JSON.parse(awaited.slice(awaited.indexOf('\n\n') + 2));
  assert.equal(toolText.status, 'all_received');
  assert.deepEqual(toolText.missing, []);
  await untilInboxShows(alice, 'hi alice, bob here');
});

test('a console agent and a CLI agent exchange encrypted messages both ways', { skip, timeout: 180_000 }, async () => {
  const state = tmp('cli-carol');
  const reg = await cli(state, ['--name', 'cli-carol', 'register']);
  assert.equal(reg.code, 0, reg.stderr);
  const id = await cli(state, ['id']);
  const carolDid = id.stdout.match(/did:mesh:[0-9a-f]{32}/)?.[0];
  assert.ok(carolDid, id.stdout);

  // console -> CLI, by the CLI agent's name.
  const sent = await sendFromConsole(alice, 'cli-carol', 'hello carol, from the console');
  assert.match(sent, /^✓ Message sent to cli-carol/, sent);
  const inbox = await cli(state, ['inbox', '--wait', '30']);
  assert.equal(inbox.code, 0, inbox.stderr);
  assert.match(inbox.stdout, /hello carol, from the console/);
  assert.match(inbox.stdout, new RegExp((await didOf(alice)).slice(0, 16)));

  // CLI -> console, by the console's DID: the console's inbox shows it live.
  const out = await cli(state, ['send', await didOf(alice), 'hi console, carol on the command line']);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, /✓ Message sent/);
  const shown = await untilInboxShows(alice, 'hi console, carol on the command line');
  assert.match(shown, new RegExp(carolDid));
});

test('a reload mid-conversation keeps the sessions and the read marks', { skip, timeout: 120_000 }, async () => {
  const aliceDid = await didOf(alice);
  // bob marks one message read, leaves the other unread.
  await sendFromConsole(alice, await didOf(bob), 'second message to bob');
  await untilInboxShows(bob, 'second message to bob');
  await bob.locator('#inbox-list li', { hasText: 'hello bob' }).getByRole('button', { name: 'Mark read' }).click();
  await bob.waitForFunction(() => [...document.querySelectorAll('#inbox-list li.read')].some((li) => li.textContent.includes('hello bob')));
  const sessionsBefore = await bob.evaluate(async () => (await globalThis.karsConsole.node.callTool('mesh_identity', {})).details.mesh.sessions);
  assert.ok(sessionsBefore >= 1);

  await bob.reload();
  await untilReady(bob);
  await untilInboxShows(bob, 'second message to bob');
  const read = await bob.locator('#inbox-list li', { hasText: 'hello bob' }).getAttribute('class');
  const unread = await bob.locator('#inbox-list li', { hasText: 'second message to bob' }).getAttribute('class');
  assert.equal(read, 'read', 'the read mark survived the reload');
  assert.equal(unread, 'unread');
  const after = await bob.evaluate(async (to) => {
    const n = globalThis.karsConsole.node;
    const id = (await n.callTool('mesh_identity', {})).details.mesh;
    const send = await n.callTool('mesh_send', { to, message: 'after the reload' });
    return { sessions: id.sessions, send: send.details.mesh, text: send.content[0].text };
  }, aliceDid);
  assert.equal(after.sessions, sessionsBefore, 'the sessions survived');
  assert.equal(after.send.session, 'existing', `the send used the session kept in IndexedDB: ${after.text}`);
  await untilInboxShows(alice, 'after the reload');
});

test('a second tab of the same identity starts no engine, says so, and takes over when the first closes', { skip, timeout: 120_000 }, async () => {
  const aliceDid = await didOf(alice);
  const second = await aliceProfile.context.newPage();
  await second.goto(server.url);
  await second.waitForFunction(() => globalThis.karsConsole?.state === 'blocked', null, { timeout: 15_000 });
  const notice = await second.locator('#notice').textContent();
  assert.match(notice, /open in another tab/, notice);
  assert.equal(second.workers().length, 0, 'no engine Worker in the second tab');
  assert.equal(await second.locator('#main').isHidden(), true);
  // The first tab is told.
  await alice.waitForFunction(() => /Another tab of this console tried to open this identity/.test(document.getElementById('notice').textContent));
  assert.equal(alice.workers().length, 1);

  await alice.close();
  await untilReady(second);
  assert.equal(await didOf(second), aliceDid, 'the same identity, now in the second tab');
  assert.equal(second.workers().length, 1);
  alice = second;
});
