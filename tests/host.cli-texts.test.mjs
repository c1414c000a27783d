// bin/kars-mesh against the REAL relay and registry (tests/harness/servers.mjs):
// what a shell user reads must be something they can act on (issue 11).
//
//   * a refused relay token names KARS_MESH_RELAY_TOKEN, and `send` does not
//     say "sent" (exit 3) while the message waits in the outbox;
//   * `inbox` shows a message that waits at the relay on the first try, even
//     when its sender's KNOCK needs a registry look-up, and says "nothing
//     new" once; an unreachable relay is named with the reason (exit 3);
//   * a wrong registry URL is named with what answered there, never its page;
//   * an unusable --state fails at once, and SIGTERM/SIGINT end the CLI;
//   * CLI words, not tool words; no raw diagnostics line without --verbose;
//   * `register` without --name keeps the name after a registry restart;
//   * `id` of a registered agent says so (not what a process that has just
//     started knows), and a one-shot command promises no retry.
//
//   bash scripts/node.sh --test tests/host.cli-texts.test.mjs
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { CLI_WORDS, cliText } from '../js-host/cli-output.js';
import { PAGE_WORDS } from '../js-host/tool-words.js';
import { createNode } from '../js-host/node-host.js';
import { freePort, startServers } from './harness/servers.mjs';
import { spawnAgtPeer } from './peers/agt_peer.mjs';

const BIN = fileURLToPath(new URL('../bin/kars-mesh', import.meta.url));
const SRC = fileURLToPath(new URL('../src/', import.meta.url));
const TOKEN = 'cli-texts-relay-token';

let plain; // relay without a token
let guarded; // relay started with AGENTMESH_RELAY_TOKEN
let dir;
const closers = [];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-cli-texts-'));
  [plain, guarded] = await Promise.all([startServers(), startServers({ relayEnv: { AGENTMESH_RELAY_TOKEN: TOKEN } })]);
});

after(async () => {
  for (const c of closers.reverse()) await c();
  await Promise.all([plain?.stop(), guarded?.stop()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Run the CLI with a private HOME and only the KARS_MESH_* settings given here. */
function run(args, { srv = plain, env = {}, signalAfterMs, signal = 'SIGTERM', timeoutMs = 40_000 } = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [BIN, ...args], {
      env: {
        ...clean,
        HOME: dir,
        ...(srv ? { KARS_MESH_RELAY: srv.relayUrl, KARS_MESH_REGISTRY: srv.registryUrl } : {}),
        ...(srv === guarded ? { KARS_MESH_RELAY_TOKEN: TOKEN } : {}),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    let signalledAt;
    if (signalAfterMs !== undefined) {
      setTimeout(() => {
        signalledAt = Date.now();
        child.kill(signal);
      }, signalAfterMs);
    }
    child.on('error', reject);
    child.on('close', (code, sig) => {
      clearTimeout(killer);
      const end = Date.now();
      resolve({ code, signal: sig, stdout, stderr, ms: end - t0, afterSignalMs: signalledAt && end - signalledAt });
    });
  });
}

const state = (name) => path.join(dir, name);
const didOf = (r) => r.stdout.match(/did:mesh:[0-9a-f]{32}/)?.[0];
const count = (text, re) => (text.match(new RegExp(re, 'g')) ?? []).length;

async function registered(name, srv = plain, extra = []) {
  const r = await run(['register', '--state', state(name), ...extra], { srv });
  assert.equal(r.code, 0, r.stderr);
  const did = didOf(r);
  assert.ok(did, r.stdout);
  return did;
}

test('a refused relay token names KARS_MESH_RELAY_TOKEN; send does not claim "sent" and exits 3; the message goes out with the right token', async () => {
  const help = await run(['--help'], { srv: null });
  assert.match(help.stdout, /KARS_MESH_RELAY_TOKEN/, 'the token variable is in kars-mesh --help');

  const bob = await registered('token-bob', guarded);
  for (const [env, said] of [
    [{ KARS_MESH_RELAY_TOKEN: 'not-the-token' }, /the relay refused this agent's relay token \(close 4003\)/],
    [{ KARS_MESH_RELAY_TOKEN: '' }, /the relay requires a token and this agent has none \(close 4003\)/],
  ]) {
    const r = await run(['send', '--state', state('token-alice'), bob, 'kept for later'], { srv: guarded, env });
    assert.equal(r.code, 3, `${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(r.stdout, /Message sent/);
    assert.match(r.stderr, said);
    assert.match(r.stderr, /was not sent: .*KARS_MESH_RELAY_TOKEN set to the relay's AGENTMESH_RELAY_TOKEN/);
    assert.match(r.stderr, new RegExp(`relay ${guarded.relayUrl.replace(/[.]/g, '\\.')}`));
    assert.match(r.stderr, /it is kept .* goes out the next time/);
    assert.doesNotMatch(r.stderr, /set relay_token/, 'no setting that does not exist');
    assert.ok(r.ms < 10_000, `a refusal is not waited out (${r.ms} ms)`);
  }
  // With the right token the kept messages go out, and a new one is "sent".
  const ok = await run(['send', '--state', state('token-alice'), bob, 'with the token'], { srv: guarded });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^✓ Message sent to did:mesh:/);
  const inbox = await run(['inbox', '--state', state('token-bob')], { srv: guarded });
  assert.equal(inbox.code, 0, inbox.stderr);
  assert.equal(count(inbox.stdout, 'kept for later'), 2, inbox.stdout);
  assert.equal(count(inbox.stdout, 'with the token'), 1, inbox.stdout);
});

test('a host says in its own words where the relay token is set (the plugin: the Gateway environment)', async () => {
  const hint = "set KARS_MESH_RELAY_TOKEN in the OpenClaw Gateway's environment to the relay's AGENTMESH_RELAY_TOKEN, then restart the Gateway";
  const node = await createNode({
    stateDir: state('token-host'), relayUrl: guarded.relayUrl, registryUrl: guarded.registryUrl,
    relayToken: 'wrong', relayTokenHint: hint, log: () => {},
  });
  closers.push(() => node.stop());
  let m;
  for (let i = 0; i < 100 && !m?.relay_problem; i++) {
    m = (await node.callTool('mesh_identity', {})).details.mesh;
    if (!m.relay_problem) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(m.relay_problem, `the relay refused this agent's relay token (close 4003); ${hint}`);
  assert.equal(m.relay_problem_kind, 'token');
  assert.equal(m.connected, false, 'a socket the relay refused is not "connected"');
});

/** A registry in front of the real one whose agent look-ups take `delayMs` (a slow, far registry). */
async function slowRegistry(target, delayMs) {
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    if (req.method === 'GET' && /^\/v1\/agents\/[^/?]+\/prekeys/.test(req.url)) await new Promise((r) => setTimeout(r, delayMs));
    const r = await fetch(target + req.url, {
      method: req.method,
      headers: { 'content-type': req.headers['content-type'] ?? 'application/json' },
      body: chunks.length ? Buffer.concat(chunks) : undefined,
    });
    res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
    res.end(Buffer.from(await r.arrayBuffer()));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

test('inbox shows a message waiting at the relay on the first try, also one whose KNOCK needs a registry look-up; then "nothing new" once', async () => {
  const carol = await registered('inbox-carol');
  // An AGT peer's KNOCK carries no signing key: the engine checks the
  // sender's registry record first, which here takes 1.5 s.
  const agt = await spawnAgtPeer({ relayUrl: plain.relayUrl, registryUrl: plain.registryUrl });
  closers.push(() => agt.close());
  agt.send(carol, { type: 'message', content: 'from an AGT peer' });
  await agt.next((e) => e.event === 'sent', 15_000, 'sent');
  await agt.close();
  const dave = await run(['send', '--state', state('inbox-dave'), carol, 'from a kars agent'], {});
  assert.equal(dave.code, 0, dave.stderr);

  const slow = await slowRegistry(plain.registryUrl, 1500);
  const first = await run(['inbox', '--state', state('inbox-carol'), '--registry', slow]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(count(first.stdout, 'from an AGT peer'), 1, first.stdout);
  assert.equal(count(first.stdout, 'from a kars agent'), 1, first.stdout);
  assert.doesNotMatch(first.stdout, /Diagnostics:/, 'the raw counters only with --verbose');

  const again = await run(['inbox', '--state', state('inbox-carol'), '--registry', slow]);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(count(again.stdout, '📭'), 1, again.stdout);
  assert.match(again.stdout, /^📭 No unread messages \(2 already read; kars-mesh inbox --all shows them again\)\.\n$/);
  // The CLI flag the text names does it.
  const all = await run(['inbox', '--state', state('inbox-carol'), '--all', '--verbose']);
  assert.equal(all.code, 0, all.stderr);
  assert.match(all.stdout, /from an AGT peer/);
  assert.match(all.stdout, /\n\nDiagnostics: \{"build_hash"/, '--verbose shows the counters');
});

test('inbox with the relay unreachable or refusing says so, with the URL and why, and exits 3 (never "Inbox empty")', async () => {
  const closed = `http://127.0.0.1:${await freePort()}`;
  const r = await run(['inbox', '--state', state('unreach'), '--relay', closed]);
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, new RegExp(`the relay at ${closed.replace(/[.]/g, '\\.')} cannot be reached: connect ECONNREFUSED`));
  assert.match(r.stderr, /came from --relay; give the right one with --relay URL or KARS_MESH_RELAY/);

  const t = await run(['inbox', '--state', state('unreach')], { srv: guarded, env: { KARS_MESH_RELAY_TOKEN: 'wrong' } });
  assert.equal(t.code, 3, t.stderr);
  assert.doesNotMatch(t.stdout, /Inbox empty|No unread/);
  assert.match(t.stderr, /were not fetched: the relay refused this agent's relay token .*KARS_MESH_RELAY_TOKEN/);
});

test('send with nothing listening at the relay\'s address says so within seconds, not after the whole 15 s wait; the message is kept', async () => {
  const peer = await registered('nothing-peer');
  await registered('nothing-sender');
  const closed = `http://127.0.0.1:${await freePort()}`;
  const r = await run(['send', peer, 'kept for later', '--state', state('nothing-sender'), '--relay', closed]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, new RegExp(`the relay at ${closed.replace(/[.]/g, '\\.')} cannot be reached: connect ECONNREFUSED`));
  assert.ok(r.ms < 10_000, `answered after ${r.ms} ms`);
  // Kept: the next run that reaches the relay sends it.
  const again = await run(['send', peer, 'and this one', '--state', state('nothing-sender')]);
  assert.equal(again.code, 0, again.stderr);
  const got = await run(['inbox', '--wait', '10', '--state', state('nothing-peer')]);
  assert.match(got.stdout, /kept for later/);
  assert.match(got.stdout, /and this one/);
});

/** A web server answering every request with a large HTML page. */
async function htmlServer() {
  const page = `<!DOCTYPE html><html><head><title>Welcome to nginx!</title><style>body{width:35em}</style></head><body><h1>Welcome to nginx!</h1>${'<p>filler</p>'.repeat(400)}</body></html>`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

test('a wrong registry URL is named with what answered there and the flag that sets it; its page is never shown', async () => {
  const web = await htmlServer();
  for (const args of [['register'], ['discover', 'translator'], ['send', 'some-name', 'hi']]) {
    const r = await run([...args, '--state', state('wrong-registry'), '--registry', web]);
    const all = r.stdout + r.stderr;
    assert.equal(r.code, 3, `${args[0]}: ${all}`);
    assert.match(r.stderr, new RegExp(`the registry URL ${web.replace(/[.]/g, '\\.')} answered 200 with an HTML page titled "Welcome to nginx!", not with the AgentMesh registry's JSON`), args[0]);
    assert.match(r.stderr, /came from --registry; give the right one with --registry URL or KARS_MESH_REGISTRY/, args[0]);
    assert.doesNotMatch(all, /<!DOCTYPE|<html|<h1|<style|filler/i, `${args[0]}: no page: ${all}`);
    assert.ok(all.length < 2000, `${args[0]}: short (${all.length} chars)`);
  }
});

test('the relay given as the registry (the two ports swapped) is named as not the registry, with the flag that sets it', async () => {
  // The real relay answers registry paths with FastAPI's bare 404; the CLI
  // used to print "registry answered 404: Not Found" and exit 1.
  const relayHttp = plain.relayUrl.replace(/^ws/, 'http');
  for (const args of [['register'], ['discover', 'translator'], ['send', 'some-name', 'hi']]) {
    const r = await run([...args, '--state', state('swapped'), '--registry', relayHttp]);
    const all = r.stdout + r.stderr;
    assert.equal(r.code, 3, `${args[0]}: ${all}`);
    assert.match(r.stderr, new RegExp(`the registry URL ${relayHttp.replace(/[.]/g, '\\.')} answered 404 "Not Found" for a path every AgentMesh registry serves: is it the registry's address \\(not the relay's\\)\\?`), `${args[0]}: ${all}`);
    assert.match(r.stderr, /came from --registry; give the right one with --registry URL or KARS_MESH_REGISTRY/, args[0]);
  }
});

test('an unusable --state fails at once naming the path and the fix; SIGTERM and SIGINT end the CLI promptly', { skip: process.platform !== 'linux' }, async () => {
  const r = await run(['id', '--state', '/proc/nope'], { srv: null, timeoutMs: 10_000 });
  assert.equal(r.signal, null, 'it ends by itself (it used to spin at 100 % CPU)');
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /cannot create state directory \/proc\/nope: /);
  assert.match(r.stderr, /--state DIR or KARS_MESH_STATE/);
  assert.ok(r.ms < 5000, `${r.ms} ms`);

  // A command waiting for a message, and one signalled while it starts.
  await registered('signals');
  for (const [signal, afterMs] of [['SIGTERM', 2500], ['SIGINT', 2500], ['SIGTERM', 150]]) {
    const s = await run(['inbox', '--wait', '60', '--state', state('signals')], { signalAfterMs: afterMs, signal });
    assert.ok(s.afterSignalMs < 3000, `${signal} after ${afterMs} ms: ended ${s.afterSignalMs} ms later`);
    assert.ok(s.code === 130 || s.signal === signal, `${signal}: code ${s.code} signal ${s.signal}\n${s.stderr}`);
  }
});

test('the CLI speaks CLI: commands and flags instead of tool calls', async () => {
  const r = await run(['offload', 'summarise this', '--state', state('words')]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /Not paired with any kars cluster\. Pair first: kars-mesh pair-with <token>/);
  assert.doesNotMatch(r.stderr + r.stdout, /mesh_pair|cloud_offload|offload_status/);
  // Every translated sentence is still the engine's (so the CLI's words do not rot).
  const rs = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.name.endsWith('.rs')) rs.push(fs.readFileSync(path.join(d, e.name), 'utf8'));
    }
  };
  walk(SRC);
  const source = rs.join('\n').replace(/\\"/g, '"');
  for (const [tool, cli] of [...CLI_WORDS, ...PAGE_WORDS]) {
    assert.ok(source.includes(tool), `the engine no longer says ${JSON.stringify(tool)}`);
    assert.doesNotMatch(cli, /mesh_[a-z]+|cloud_offload|offload_(status|cancel)|unread_only/, cli);
  }
  // Refusals and notes of other commands (a fresh-clone walk-through found these in tool words).
  const bad = await run(['send', 'did:mesh:zz', 'hi', '--state', state('words')]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /❌ send: the recipient is not usable: .*kars-mesh discover lists known agents/);
  assert.doesNotMatch(bad.stderr + bad.stdout, /mesh_send|`to`|`discover`/);
  await registered('words-lister');
  const list = await run(['discover', '--state', state('words-lister')]);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /kars-mesh discover <capability> finds others/);
  assert.doesNotMatch(list.stdout, /`capability`/);
  assert.equal(cliText('📭 Inbox empty.\n\nDiagnostics: {"a":1}'), '📭 Inbox empty.');
  assert.equal(cliText('📭 Inbox empty.\n\nDiagnostics: {"a":1}', { verbose: true }), '📭 Inbox empty.\n\nDiagnostics: {"a":1}');
});

test('id tells an agent registered earlier as registered and connected, not what a process that has just started knows; with nothing reachable it says it could not confirm, at once', async () => {
  await registered('id-known');
  const r = await run(['id', '--state', state('id-known')]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Registered: yes$/m, r.stdout);
  assert.match(r.stdout, /^Relay: connected$/m, r.stdout);
  const closed = `http://127.0.0.1:${await freePort()}`;
  const off = await run(['id', '--state', state('id-known')], { srv: null, env: { KARS_MESH_RELAY: closed, KARS_MESH_REGISTRY: closed } });
  assert.equal(off.code, 0, off.stderr);
  assert.match(off.stdout, /^Registered: not confirmed in this run \(the registry has not answered; kars-mesh register waits for it and says why\)$/m, off.stdout);
  assert.match(off.stdout, /^Relay: (connecting \(the last attempt failed: .+\)|not connected yet \(kars-mesh inbox connects, and says why if it cannot\))$/m, off.stdout);
  assert.ok(off.ms < 10_000, `id took ${off.ms} ms with nothing to reach`);
});

test('a one-shot command does not promise a retry it will not be there to make', async () => {
  const closed = `http://127.0.0.1:${await freePort()}`;
  const env = { KARS_MESH_RELAY: closed, KARS_MESH_REGISTRY: closed };
  const d = await run(['discover', '--state', state('no-retry')], { srv: null, env });
  assert.equal(d.code, 3, d.stderr);
  assert.match(d.stderr, /registry unreachable at http:\/\/127\.0\.0\.1:\d+/);
  assert.doesNotMatch(d.stderr, /retrying in/);
  // register waits for the first attempt, so its warning is always printed
  // (discover may end before the background registration has failed): the
  // warning is there without the promise of a retry.
  const r = await run(['register', '--state', state('no-retry')], { srv: null, env });
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /^kars-mesh warn: registration failed: registry unreachable at http:\/\/127\.0\.0\.1:\d+: .+$/m);
  assert.doesNotMatch(r.stderr, /retrying in/);
  // --verbose shows the core's log as it is.
  const v = await run(['register', '--verbose', '--state', state('no-retry')], { srv: null, env });
  assert.equal(v.code, 3, v.stderr);
  assert.match(v.stderr, /^kars-mesh warn: registration failed: .*; retrying in 30 s$/m);
});

test('an argument the mesh refuses is a usage error (exit 2), not "unreachable", even while the registry is down', async () => {
  const closed = `http://127.0.0.1:${await freePort()}`;
  const env = { KARS_MESH_RELAY: closed, KARS_MESH_REGISTRY: closed };
  // The background registration fails meanwhile; the refusal is not about it.
  const r = await run(['send', 'did:mesh:xyz', 'hi', '--verbose', '--state', state('bad-did')], { srv: null, env });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /^❌ send: the recipient is not usable: .+$/m);
  assert.doesNotMatch(r.stderr, /came from KARS_MESH_REGISTRY/);
  // A send the registry's absence did stop is still exit 3.
  const down = await run(['send', 'did:mesh:0123456789abcdef0123456789abcdef', 'hi', '--state', state('bad-did')], { srv: null, env });
  assert.equal(down.code, 3, down.stderr);
  assert.match(down.stderr, /registry unreachable at/);
});

test('register without --name after a registry restart keeps the name registered before', async () => {
  const srv = await startServers();
  closers.push(() => srv.stop());
  const did = await registered('named', srv, ['--name', 'zed-the-agent']);
  const find = async () => {
    const r = await run(['discover', 'zed-the-agent', '--state', state('finder')], { srv });
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };
  assert.ok((await find()).includes(did));
  await srv.restartRegistry();
  assert.ok(!(await find()).includes(did), 'the restarted registry forgot it');
  const again = await run(['register', '--state', state('named')], { srv });
  assert.equal(again.code, 0, again.stderr);
  assert.ok((await find()).includes(did), 'registered again under its name');
  const id = await run(['id', '--json', '--state', state('named')], { srv });
  assert.equal(JSON.parse(id.stdout).details.mesh.name, 'zed-the-agent');
});

test('register --name with a new name renames the agent in the registry; others reach it by the new name, its sessions go on', async () => {
  // The registry keeps what an identity first registered with (409 to a
  // second registration): `--name` said "Registered" while the registry
  // kept the old name until it happened to restart.
  const srv = await startServers();
  closers.push(() => srv.stop());
  const did = await registered('renamed', srv, ['--name', 'ren-old']);
  const peer = await registered('ren-peer', srv, ['--name', 'ren-peer']);
  const first = await run(['send', '--state', state('ren-peer'), 'ren-old', 'before the rename'], { srv });
  assert.equal(first.code, 0, first.stderr);
  const record = async () => (await (await fetch(`${srv.registryUrl}/v1/agents/${did}`)).json());
  assert.equal((await record()).metadata.name, 'ren-old');

  const again = await run(['register', '--state', state('renamed'), '--name', 'ren-new'], { srv });
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /Registered as did:mesh:/);
  const r = await record();
  assert.equal(r.metadata.name, 'ren-new');
  assert.ok(r.capabilities.includes('ren-new') && !r.capabilities.includes('ren-old'), JSON.stringify(r.capabilities));

  const byOld = await run(['send', '--state', state('ren-peer'), 'ren-old', 'to the old name'], { srv });
  assert.notEqual(byOld.code, 0, byOld.stdout);
  assert.match(byOld.stdout + byOld.stderr, /no agent is registered under the name "ren-old"/);
  const byNew = await run(['send', '--state', state('ren-peer'), 'ren-new', 'after the rename'], { srv });
  assert.equal(byNew.code, 0, byNew.stderr);
  const inbox = await run(['inbox', '--state', state('renamed'), '--wait', '5'], { srv });
  assert.equal(inbox.code, 0, inbox.stderr);
  assert.match(inbox.stdout, /before the rename/);
  assert.match(inbox.stdout, /after the rename/);
  assert.ok(inbox.stdout.includes(peer.slice(0, 16)) || /ren-peer/.test(inbox.stdout), inbox.stdout);

  // Registering again under the same name changes nothing.
  const same = await run(['register', '--state', state('renamed')], { srv });
  assert.equal(same.code, 0, same.stderr);
  assert.equal((await record()).metadata.name, 'ren-new');
});

test('send to an agent that is not running returns once the relay has the message, without a failure-sounding line; it arrives when the agent reads', async () => {
  // It used to wait the whole 15 s for a receipt that an offline agent
  // never sends, on every send, then print "not yet confirmed".
  const bob = await registered('offline-bob');
  await registered('offline-alice');
  for (const text of ['one', 'two']) {
    const r = await run(['send', '--state', state('offline-alice'), bob, `while offline ${text}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /✓ Message sent to /);
    assert.equal(r.stderr, '', 'nothing on stderr for a message the relay keeps');
    assert.ok(r.ms < 8000, `send took ${r.ms} ms`);
  }
  const inbox = await run(['inbox', '--state', state('offline-bob')]);
  assert.equal(inbox.code, 0, inbox.stderr);
  assert.match(inbox.stdout, /while offline one/);
  assert.match(inbox.stdout, /while offline two/);
  assert.match(inbox.stdout, /now marked read/);
  // Shown again with --all: nothing is marked, and nothing says so.
  const all = await run(['inbox', '--all', '--state', state('offline-bob')]);
  assert.equal(all.code, 0, all.stderr);
  assert.match(all.stdout, /while offline one/);
  assert.doesNotMatch(all.stdout, /now marked read/);
  // Receipted now: the next send has nothing of the earlier ones to send again.
  const next = await run(['send', '--state', state('offline-alice'), bob, 'third']);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.stderr, '');
});

test('inbox --limit marks every message it printed read, not the first 10', async () => {
  const bob = await registered('many-bob');
  // 14 messages from an agent in this process (14 CLI sends would take 14 starts).
  const alice = await createNode({ stateDir: path.join(dir, 'many-alice'), relayUrl: plain.relayUrl, registryUrl: plain.registryUrl, name: 'many-alice', log: () => {} });
  try {
    for (let i = 0; i < 14; i++) {
      const r = await alice.callTool('mesh_send', { to: bob, message: `numbered ${String(i).padStart(2, '0')}` });
      assert.notEqual(r.isError, true, JSON.stringify(r.content));
    }
  } finally {
    await alice.stop();
  }
  const first = await run(['inbox', '--limit', '500', '--wait', '10', '--state', state('many-bob')]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal((first.stdout.match(/numbered \d\d/g) ?? []).length, 14, first.stdout);
  assert.match(first.stdout, /now marked read/);
  // They were marked, as it said: nothing unread is shown again.
  const again = await run(['inbox', '--limit', '500', '--state', state('many-bob')]);
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stdout, /numbered \d\d/, again.stdout);
});

test('a damaged state database is named once, with the backup to restore, exit 3; not "restart it"', async () => {
  const bob = await registered('damaged-bob');
  const alice = await createNode({ stateDir: path.join(dir, 'damaged-alice'), relayUrl: plain.relayUrl, registryUrl: plain.registryUrl, name: 'damaged-alice', log: () => {} });
  try {
    for (let i = 0; i < 40; i++) {
      const r = await alice.callTool('mesh_send', { to: bob, message: `kept ${i} ${'x'.repeat(3000)}` });
      assert.notEqual(r.isError, true, JSON.stringify(r.content));
    }
  } finally {
    await alice.stop();
  }
  const read = await run(['inbox', '--limit', '500', '--wait', '10', '--state', state('damaged-bob')]);
  assert.equal(read.code, 0, read.stderr);
  // The middle half of the file overwritten, as a failing disk or a stray write would.
  const db = path.join(state('damaged-bob'), 'state.db');
  const pages = fs.statSync(db).size / 4096;
  const fd = fs.openSync(db, 'r+');
  for (let p = Math.floor(pages / 4); p < Math.floor((3 * pages) / 4); p++) fs.writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, p * 4096);
  fs.closeSync(fd);
  for (const args of [['inbox', '--all'], ['id']]) {
    const r = await run([...args, '--state', state('damaged-bob')]);
    assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(count(r.stderr, 'is damaged'), 1, `said once: ${r.stderr}`);
    assert.match(r.stderr, /the state database .*state\.db is damaged \(database disk image is malformed\); a restart reads the same damage\. Stop kars-mesh and restore the state directory from a backup/);
    assert.doesNotMatch(r.stderr, /restart it|ERR_SQLITE/);
  }
});

test('a command started by the older-Node wrapper stops when the wrapper is killed outright, and frees its state directory', async () => {
  // bin/kars-mesh on a system Node without node:sqlite runs itself again
  // under Node 24; kill -9 of the wrapper cannot be passed on. Here a shell
  // plays the wrapper (its pid in KARS_MESH_WRAPPER_PID, as the wrapper sets).
  await registered('orphan-bob');
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  const sh = spawn('/bin/sh', ['-c', 'KARS_MESH_WRAPPER_PID=$$ "$0" "$1" inbox --wait 60 --state "$2" & echo "child $!"; wait', process.execPath, BIN, state('orphan-bob')], {
    env: { ...clean, HOME: dir, KARS_MESH_RELAY: plain.relayUrl, KARS_MESH_REGISTRY: plain.registryUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  sh.stdout.on('data', (d) => (out += d));
  const alive = (pid) => { try { process.kill(pid, 0); return true; } catch { return false; } };
  let child;
  for (const until = Date.now() + 10_000; !child && Date.now() < until; await new Promise((r) => setTimeout(r, 50))) child = Number(/child (\d+)/.exec(out)?.[1]);
  assert.ok(child > 0, out);
  // Up and waiting on its inbox (it holds the state directory's lock).
  await new Promise((r) => setTimeout(r, 3000));
  assert.ok(alive(child), 'the command runs');
  sh.kill('SIGKILL');
  let gone = false;
  for (const until = Date.now() + 10_000; !(gone = !alive(child)) && Date.now() < until; ) await new Promise((r) => setTimeout(r, 100));
  if (!gone) process.kill(child, 'SIGKILL');
  assert.ok(gone, 'the command outlived its wrapper');
  const next = await run(['id', '--state', state('orphan-bob')]);
  assert.equal(next.code, 0, `the state directory is still held: ${next.stderr}`);
});

/**
 * A stand-in relay that records the frames it is sent (whoever wrote a
 * pasted pairing token chose its relay_url: this is what such a relay reads).
 */
async function captureRelay() {
  const { WebSocketServer } = await import('ws');
  const frames = [];
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (m) => frames.push(JSON.parse(String(m)))));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  closers.push(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise((r) => server.close(r));
  });
  return { url, frames };
}

/** Run the CLI until `relay` has a connect frame from it (or 20 s); the frame, and what the CLI said. */
async function connectFrameOf(relay, args, env) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  const before = relay.frames.length;
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...clean, HOME: dir, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.on('close', r));
  const t0 = Date.now();
  let connect;
  while (!connect && Date.now() - t0 < 20_000 && child.exitCode === null) {
    await new Promise((r) => setTimeout(r, 50));
    connect = relay.frames.slice(before).find((f) => f.type === 'connect');
  }
  child.kill('SIGKILL');
  await exited;
  assert.ok(connect, `no connect frame reached ${relay.url}:\n${stderr}`);
  return { connect, stderr };
}

test('KARS_MESH_RELAY_TOKEN goes only to a relay the user named, not to one a pasted pairing token or endpoints.json names', { timeout: 120_000 }, async () => {
  const SECRET = 'users-relay-secret-4242';
  const evil = await captureRelay();
  // A real token's shape, its relay_url pointing at the stand-in.
  const gen = await run(['pair', 'generate', '--dir', state('token-cluster'), '--name', 'x'], { srv: null });
  assert.equal(gen.code, 0, gen.stderr);
  const payload = JSON.parse(Buffer.from(gen.stdout.match(/azcp_1_([A-Za-z0-9_-]+)/)[1], 'base64url').toString('utf8'));
  const token = 'azcp_1_' + Buffer.from(JSON.stringify({ ...payload, relay_url: evil.url, registry_url: plain.registryUrl })).toString('base64url');

  // The token chose the relay: the user's relay token stays home, and the CLI says why and what to do.
  const paste = await connectFrameOf(evil, ['pair-with', '--state', state('token-paste'), token], { KARS_MESH_RELAY_TOKEN: SECRET });
  assert.equal(paste.connect.token, undefined, 'the relay token was sent to the relay the pairing token named');
  assert.ok(!JSON.stringify(paste.connect).includes(SECRET));
  assert.match(paste.stderr, new RegExp(`KARS_MESH_RELAY_TOKEN is not sent to ${evil.url.replace(/[.]/g, '\\.')} \\(the token's relay_url\\).*run once with KARS_MESH_RELAY=`));
  assert.ok(!paste.stderr.includes(SECRET), 'the secret is not printed');

  // The user names that relay: then it is theirs, and the token goes; also
  // written as the core writes the same relay (ws for http, /ws, a final /).
  for (const [i, same] of [`${evil.url}/`, `${evil.url.replace('http:', 'ws:')}/ws`].entries()) {
    const named = await connectFrameOf(evil, ['pair-with', '--state', state(`token-named-${i}`), token], { KARS_MESH_RELAY_TOKEN: SECRET, KARS_MESH_RELAY: same });
    assert.equal(named.connect.token, SECRET, same);
    assert.doesNotMatch(named.stderr, /is not sent to/);
  }

  // endpoints.json as a pair-with of a pasted token left it: the token does
  // not go there later either; as one the user named the relay for, it does.
  const remembered = state('token-remembered');
  fs.mkdirSync(remembered, { recursive: true, mode: 0o700 });
  const endpoints = (allowed) => fs.writeFileSync(path.join(remembered, 'endpoints.json'), JSON.stringify({ relay_url: evil.url, registry_url: plain.registryUrl, ...(allowed ? { relay_token_allowed: true } : {}) }));
  endpoints(false);
  const later = await connectFrameOf(evil, ['inbox', '--state', remembered, '--wait', '5'], { KARS_MESH_RELAY_TOKEN: SECRET });
  assert.equal(later.connect.token, undefined, 'the relay token was sent to the relay endpoints.json named');
  assert.match(later.stderr, /KARS_MESH_RELAY_TOKEN is not sent to .*endpoints\.json/);
  endpoints(true);
  const vouched = await connectFrameOf(evil, ['inbox', '--state', remembered, '--wait', '5'], { KARS_MESH_RELAY_TOKEN: SECRET });
  assert.equal(vouched.connect.token, SECRET);
  // A file without the flag (a pasted token's, or one from before the flag):
  // naming its relay once is remembered, and later runs send the token there.
  endpoints(false);
  const once = await connectFrameOf(evil, ['inbox', '--state', remembered, '--wait', '5'], { KARS_MESH_RELAY_TOKEN: SECRET, KARS_MESH_RELAY: evil.url });
  assert.equal(once.connect.token, SECRET);
  assert.equal(JSON.parse(fs.readFileSync(path.join(remembered, 'endpoints.json'), 'utf8')).relay_token_allowed, true);
  const after = await connectFrameOf(evil, ['inbox', '--state', remembered, '--wait', '5'], { KARS_MESH_RELAY_TOKEN: SECRET });
  assert.equal(after.connect.token, SECRET);
});

test('send <did> - reads the message from stdin: 200 KiB, more than a command line holds, arrives whole (a walk-through could not send between 128 KiB and the 1 MiB limit)', { timeout: 120_000 }, async () => {
  const bob = await registered('stdin-bob');
  const body = `${'line of a long report\n'.repeat(9_500)}end`;
  assert.ok(Buffer.byteLength(body) > 200 * 1024);
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  const child = spawn(process.execPath, [BIN, 'send', '--state', state('stdin-alice'), bob, '-'], {
    env: { ...clean, HOME: dir, KARS_MESH_RELAY: plain.relayUrl, KARS_MESH_REGISTRY: plain.registryUrl },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  child.stdin.end(`${body}\n`);
  const code = await new Promise((r) => child.on('close', r));
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  assert.match(stdout, /^✓ Message sent to did:mesh:/);
  const peek = await run(['inbox', '--state', state('stdin-bob'), '--peek']);
  assert.equal(peek.code, 0, peek.stderr);
  assert.match(peek.stdout, /\(a message over 200 characters is cut above; kars-mesh inbox --json shows it whole\)/);
  // The CLI's 200 is the engine's.
  assert.match(fs.readFileSync(path.join(SRC, 'agent', 'tools', 'mesh_inbox.rs'), 'utf8'), /const LINE_CHARS: usize = 200;/);
  const inbox = await run(['inbox', '--state', state('stdin-bob'), '--json']);
  assert.equal(inbox.code, 0, inbox.stderr);
  const got = JSON.parse(inbox.stdout).details.mesh.messages.map((m) => m.payload?.content);
  assert.deepEqual(got, [body], 'the whole message, its final newline off, and no literal "-"');
  // Nothing on stdin (a producer that failed): refused, nothing sent (a review).
  const empty = await run(['send', '--state', state('stdin-alice'), bob, '-']);
  assert.equal(empty.code, 2, `${empty.stdout}\n${empty.stderr}`);
  assert.match(empty.stderr, /the message read from stdin is empty: nothing was sent/);
  assert.doesNotMatch(empty.stdout, /Message sent/);
});
