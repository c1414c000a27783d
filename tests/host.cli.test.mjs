// bin/kars-mesh: commands, help, usage errors and exit codes (spawned).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { openStateDir } from '../js-host/state-db.js';
import { parseArgs, plan } from '../js-host/cli.js';

const BIN = fileURLToPath(new URL('../bin/kars-mesh', import.meta.url));

function tmp(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-cli-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Run the CLI with a private HOME and no KARS_MESH_* settings from the caller. */
function run(args, { home, env = {} } = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...clean, HOME: home ?? os.tmpdir(), USERPROFILE: home ?? os.tmpdir(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('id prints a DID and exits 0; the DID is stable across runs', async (t) => {
  const dir = tmp(t);
  const state = path.join(dir, 'state');
  const a = await run(['id', '--state', state], { home: dir });
  assert.equal(a.code, 0, a.stderr);
  const did = a.stdout.match(/did:mesh:[0-9a-f]{32}/)?.[0];
  assert.ok(did, a.stdout);
  const b = await run(['--state', state, 'id'], { home: dir });
  assert.equal(b.code, 0, b.stderr);
  assert.ok(b.stdout.includes(did));
  assert.equal(fs.existsSync(path.join(state, 'lock')), false, 'the lock is released on exit');
});

test('id --json prints the whole tool result', async (t) => {
  const dir = tmp(t);
  const r = await run(['id', '--json', `--state=${path.join(dir, 's')}`], { home: dir });
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.match(j.details.mesh.did, /^did:mesh:/);
  assert.equal(j.content[0].type, 'text');
});

test('KARS_MESH_STATE is the state directory when --state is not given; default is ~/.kars-mesh', async (t) => {
  const dir = tmp(t);
  const viaEnv = path.join(dir, 'from-env');
  const r = await run(['id'], { home: dir, env: { KARS_MESH_STATE: viaEnv } });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(fs.existsSync(path.join(viaEnv, 'state.key')));
  const d = await run(['id'], { home: dir });
  assert.equal(d.code, 0, d.stderr);
  assert.ok(fs.existsSync(path.join(dir, '.kars-mesh', 'state.key')));
});

test('--help and help <command> exit 0 and print usage on stdout', async () => {
  const r = await run(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^Usage: kars-mesh/);
  for (const c of ['id', 'register', 'send', 'inbox', 'discover']) assert.ok(r.stdout.includes(`  ${c}`), c);
  assert.match(r.stdout, /KARS_MESH_RELAY/);
  assert.equal(r.stderr, '');
  const s = await run(['send', '--help']);
  assert.equal(s.code, 0);
  assert.match(s.stdout, /^Usage: kars-mesh send <did> <text\|json>/);
  const h = await run(['help', 'inbox']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--wait SECONDS/);
  // Every command the main help lists answers `help <command>` (the main
  // help offers it), with its own usage.
  const listed = [...r.stdout.split('\nGlobal flags')[0].matchAll(/^  ([a-z][a-z-]*)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
  assert.ok(listed.length >= 13, `commands listed by --help: ${listed}`);
  for (const c of listed) {
    const u = await run(['help', c]);
    assert.equal(u.code, 0, `help ${c}: ${u.stderr}`);
    assert.match(u.stdout, new RegExp(`kars-mesh ${c}\\b`), `help ${c} printed: ${u.stdout.slice(0, 200)}`);
  }
});

test('unknown command exits 2 with usage on stderr', async () => {
  const r = await run(['frobnicate']);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /unknown command "frobnicate"/);
  assert.match(r.stderr, /Usage: kars-mesh/);
});

test('usage errors exit 2: no command, missing arguments, bad flags and values', async (t) => {
  const dir = tmp(t);
  const cases = [
    [[], /no command given/],
    [['send'], /missing <did> <message>/],
    [['send', 'did:mesh:00'], /missing <message>/],
    [['discover', 'a', 'b'], /unexpected argument "b"/],
    [['id', 'extra'], /unexpected argument "extra"/],
    [['id', '--bogus'], /unknown flag --bogus/],
    [['inbox', '--wait', 'soon'], /--wait must be a number from 0 to 300, not "soon"/],
    [['inbox', '--wait', '400'], /--wait must be a number from 0 to 300, not "400"/],
    [['inbox', '--limit', '0'], /--limit must be a whole number ≥ 1, not "0"/],
    [['id', '--name', 'Alice Smith'], /--name is what other agents send to: one word of at most 128 characters/],
    [['offload', 'task', '--timeout', '5000'], /--timeout must be a number from 1 to 1440, not "5000"/],
    [['inbox', '--wait'], /--wait needs a value/],
    [['id', '--wait', '3'], /--wait does not apply to "id"/],
    [['id', '--relay', 'not a url'], /--relay must be a URL/],
    [['id', '--registry', 'ftp://x'], /--registry must be an http\(s\) URL/],
    [['id', '--relay', 'ftp://x'], /--relay must be an http\(s\) or ws\(s\) URL/],
    // The registry is reached over HTTP only: a ws:// registry used to reach
    // the engine and come back as 'could not open the identity … not valid JSON'.
    [['id', '--registry', 'ws://127.0.0.1:8082'], /--registry must be an http\(s\) URL/],
    // Credentials are refused without quoting the URL that holds them.
    [['id', '--relay', 'https://bob:hunter2@relay.example'], /--relay carries a user name or password/],
    [['id', '--registry', 'http://hunter2@127.0.0.1:8082'], /--registry carries a user name or password/],
    // A token split by a line wrap: its second half (where the secret is) is not echoed.
    [['pair-with', 'azcp_1_eyJjb250cm9sbGVy', 'hunter2hunter2'], /unexpected argument \(14 characters, not shown\); if it is the rest of the token, put the whole token in quotes, or pass - to read it/],
    [['discover', 'x', 'hunter2'.repeat(7)], /unexpected argument \(49 characters, not shown\)$/m],
  ];
  const results = await Promise.all(cases.map(([args]) => run([...args, '--state', path.join(dir, 's')], { home: dir })));
  for (const [i, [args, re]] of cases.entries()) {
    const r = results[i];
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
    assert.match(r.stderr, /Usage: kars-mesh/, args.join(' '));
    assert.doesNotMatch(r.stderr, /hunter2/, args.join(' '));
    // A bad value shows its command's usage, not the whole list.
    if (['inbox', 'offload'].includes(args[0])) assert.match(r.stderr, new RegExp(`Usage: kars-mesh ${args[0]}`), args.join(' '));
  }
  assert.equal(fs.existsSync(path.join(dir, 's')), false, 'usage errors touch no state');
});

test('a relative KARS_MESH_STATE is refused: the plugin reads it from the home directory, a command from where it runs', async (t) => {
  const dir = tmp(t);
  const cwd = path.join(dir, 'work');
  fs.mkdirSync(cwd);
  const r = await new Promise((resolve) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
    const child = spawn(process.execPath, [BIN, 'id'], { cwd, env: { ...clean, HOME: dir, KARS_MESH_STATE: 'relstate' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stderr }));
  });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /KARS_MESH_STATE="relstate" is a relative path/);
  assert.match(r.stderr, /Set it to an absolute path \(or ~\/relstate\)/);
  assert.equal(fs.existsSync(path.join(cwd, 'relstate')), false, 'no identity made in the working directory');
  assert.equal(fs.existsSync(path.join(dir, 'relstate')), false, 'nor in the home directory');
  // ~/… and absolute paths are taken; --state still reads a relative path from where it runs.
  const tilde = await run(['id'], { home: dir, env: { KARS_MESH_STATE: '~/from-tilde' } });
  assert.equal(tilde.code, 0, tilde.stderr);
  assert.ok(fs.existsSync(path.join(dir, 'from-tilde', 'state.key')));
});

test('a state directory in use exits 3 with an actionable message', async (t) => {
  const dir = tmp(t);
  const state = path.join(dir, 'state');
  const held = openStateDir(state); // this test process holds it
  t.after(() => held.close());
  const r = await run(['id', '--state', state], { home: dir });
  assert.equal(r.code, 3);
  assert.match(r.stderr, new RegExp(`in use by process ${process.pid} \\(one process per identity`));
});

test('a group-readable state key exits 3 and says how to fix it', { skip: process.platform === 'win32' }, async (t) => {
  const dir = tmp(t);
  const state = path.join(dir, 'state');
  assert.equal((await run(['id', '--state', state], { home: dir })).code, 0);
  fs.chmodSync(path.join(state, 'state.key'), 0o644);
  const r = await run(['id', '--state', state], { home: dir });
  assert.equal(r.code, 3);
  assert.match(r.stderr, /chmod 600/);
});

test('argument mapping to engine tools', () => {
  const env = {};
  const p = (argv) => plan(argv, env).run;
  assert.deepEqual(p(['id']).tool, 'mesh_identity');
  assert.deepEqual(p(['register']).tool, 'mesh_register');
  assert.deepEqual(p(['send', 'did:mesh:ab', 'hello', 'there']).args, {
    to: 'did:mesh:ab',
    message: { type: 'message', content: 'hello there' },
  });
  assert.deepEqual(p(['send', 'did:mesh:ab', '{"type":"task","x":1}']).args.message, { type: 'task', x: 1 });
  assert.deepEqual(p(['send', 'did:mesh:ab', '[1,2]']).args.message, { type: 'message', content: '[1,2]' });
  assert.deepEqual(p(['send', 'did:mesh:ab', '--', '-dash']).args.message, { type: 'message', content: '-dash' });
  assert.deepEqual(p(['inbox', '--wait', '2.5', '--peek']).args, { wait_seconds: 2.5, peek: true });
  assert.deepEqual(p(['inbox']).args, {});
  assert.deepEqual(p(['discover', 'translate', '--limit=3']).args, { capability: 'translate', limit: 3 });
  assert.equal(p(['discover', 'x']).tool, 'discover');
  // Without a capability the engine lists kars-mesh agents (its own hint says so).
  assert.deepEqual(p(['discover']).args, {});
  const n = p(['id', '--relay', 'http://r:1', '--registry', 'http://g:2', '--name', 'bob']).node;
  assert.equal(n.relayUrl, 'http://r:1');
  assert.equal(n.registryUrl, 'http://g:2');
  assert.equal(n.name, 'bob');
  const e = plan(['id'], { KARS_MESH_RELAY: 'http://env-relay:8083', KARS_MESH_REGISTRY: 'http://env-reg:8082', KARS_MESH_STATE: '/tmp/x' }).run.node;
  assert.deepEqual([e.relayUrl, e.registryUrl, e.stateDir], ['http://env-relay:8083', 'http://env-reg:8082', path.resolve('/tmp/x')]);
  assert.deepEqual(parseArgs(['--json', 'id', '-v']).flags, { json: true, verbose: true });
});

// main() in-process with a stand-in node: the exit-code policy.
import { main, EXIT } from '../js-host/cli.js';
import { StateDirError } from '../js-host/storage-fs.js';

function sink() {
  const s = { text: '', write: (x) => { s.text += x; return true; } };
  return s;
}

function fakeNode({ result, failIo = false, hang = false, status } = {}) {
  const node = {
    ioFailures: 0,
    stopped: false,
    calls: [],
    async callTool(tool, args, { signal } = {}) {
      node.calls.push({ tool, args });
      // mesh_identity's details: the relay's state (cli.js asks after inbox and send).
      if (status && tool === 'mesh_identity') return { content: [{ type: 'text', text: 'DID: …' }], details: { mesh: status } };
      if (failIo) node.ioFailures++;
      if (hang) {
        return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
      }
      return result;
    },
    async stop() {
      node.stopped = true;
    },
  };
  return node;
}

const ok = { content: [{ type: 'text', text: 'sent' }], details: { mesh: { id: 'm1' } } };
const bad = { content: [{ type: 'text', text: '❌ no such agent' }], details: { mesh: { error: 'no such agent' } } };

async function mainWith(node, argv, opts = {}) {
  const stdout = sink();
  const stderr = sink();
  const code = await main(argv, { stdout, stderr, env: { KARS_MESH_STATE: '/nonexistent/x' }, createNodeImpl: async () => node, ...opts });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

test('exit codes: 0 ok, 1 tool error, 3 tool error with unreachable relay/registry or state problem, 130 interrupted', async () => {
  let n = fakeNode({ result: ok });
  let r = await mainWith(n, ['send', 'did:mesh:ab', 'hi']);
  assert.deepEqual([r.code, r.stdout, r.stderr], [EXIT.OK, 'sent\n', '']);
  // After a send, the CLI asks (mesh_identity: outbox) whether it went out before stopping.
  assert.deepEqual(n.calls, [
    { tool: 'mesh_send', args: { to: 'did:mesh:ab', message: { type: 'message', content: 'hi' } } },
    { tool: 'mesh_identity', args: {} },
  ]);
  assert.equal(n.stopped, true);

  r = await mainWith(fakeNode({ result: bad }), ['send', 'did:mesh:ab', 'hi']);
  assert.deepEqual([r.code, r.stdout, r.stderr], [EXIT.TOOL_ERROR, '', '❌ no such agent\n']);

  r = await mainWith(fakeNode({ result: bad }), ['send', 'did:mesh:ab', 'hi', '--json']);
  assert.equal(r.code, EXIT.TOOL_ERROR);
  assert.deepEqual(JSON.parse(r.stdout), bad);

  r = await mainWith(fakeNode({ result: bad, failIo: true }), ['discover', 'x']);
  assert.equal(r.code, EXIT.UNREACHABLE);

  r = await mainWith(fakeNode({ result: ok, failIo: true }), ['discover', 'x']);
  assert.equal(r.code, EXIT.OK, 'a transient network failure that the core recovered from is not an error');

  // Arguments the engine refused before asking the network: a usage error,
  // whatever the network did meanwhile; only the engine's exact marker counts.
  const refused = { content: [{ type: 'text', text: '❌ mesh_send: `to` is not usable' }], details: { mesh: { error: 'mesh_send: `to` is not usable', bad_input: true } } };
  r = await mainWith(fakeNode({ result: refused, failIo: true }), ['send', 'did:mesh:ab', 'hi']);
  // In the CLI's words (js-host/cli-output.js CLI_WORDS).
  assert.deepEqual([r.code, r.stderr], [EXIT.USAGE, '❌ send: the recipient is not usable\n']);
  const loose = { ...refused, details: { mesh: { ...refused.details.mesh, bad_input: 'true' } } };
  r = await mainWith(fakeNode({ result: loose, failIo: true }), ['send', 'did:mesh:ab', 'hi']);
  assert.equal(r.code, EXIT.UNREACHABLE);

  r = await mainWith(null, ['id'], { createNodeImpl: async () => { throw new StateDirError('state directory /x is in use by process 1'); } });
  assert.equal(r.code, EXIT.UNREACHABLE);
  assert.match(r.stderr, /in use by process 1/);

  // inbox prints first (after asking whether the relay was reached), then
  // marks exactly the printed entries read.
  const inboxResult = { content: [{ type: 'text', text: '📬 1 of 1 message(s) (1 unread):' }], details: { mesh: { messages: [{ id: 'm1' }] } } };
  const up = { connected: true };
  n = fakeNode({ result: inboxResult, status: up });
  r = await mainWith(n, ['inbox']);
  assert.equal(r.code, EXIT.OK);
  // The header counted it unread when it was printed; a line after the mark says it no longer is.
  assert.equal(r.stdout, '📬 1 of 1 message(s) (1 unread):\n(now marked read; kars-mesh inbox --all shows them again)\n');
  assert.deepEqual(n.calls, [
    { tool: 'mesh_inbox', args: {} },
    { tool: 'mesh_identity', args: {} },
    { tool: 'mesh_inbox', args: { ids: ['m1'], mark_read: true } },
  ]);
  n = fakeNode({ result: inboxResult, status: up });
  r = await mainWith(n, ['inbox', '--peek']);
  assert.deepEqual(n.calls, [{ tool: 'mesh_inbox', args: { peek: true } }, { tool: 'mesh_identity', args: {} }]);
  assert.equal(r.stdout, '📬 1 of 1 message(s) (1 unread):\n', 'nothing was marked read');
  // The relay not reached: what arrived earlier is shown (and marked), exit 3 says why.
  const down = { connected: false, relay_error: 'connect ECONNREFUSED 127.0.0.1:8083' };
  n = fakeNode({ result: inboxResult, status: down });
  r = await mainWith(n, ['inbox']);
  assert.equal(r.code, EXIT.UNREACHABLE);
  assert.equal(r.stdout, '📬 1 of 1 message(s) (1 unread):\n(now marked read; kars-mesh inbox --all shows them again)\n');
  assert.match(r.stderr, /not fetched: the relay at http:\/\/127\.0\.0\.1:8083 cannot be reached: connect ECONNREFUSED/);
  assert.equal(n.calls.at(-1).args.mark_read, true);
  const empty = { content: [{ type: 'text', text: '📭 Inbox empty.\n\nDiagnostics: {}' }], details: { mesh: { messages: [] } } };
  r = await mainWith(fakeNode({ result: empty, status: down }), ['inbox']);
  assert.deepEqual([r.code, r.stdout], [EXIT.UNREACHABLE, ''], 'no "Inbox empty" when the relay was not reached');

  n = fakeNode({ hang: true });
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(new Error('SIGINT')), 20);
  r = await mainWith(n, ['inbox', '--wait', '60'], { signal: ctl.signal });
  assert.equal(r.code, EXIT.INTERRUPTED);
  assert.deepEqual(n.calls[0].args, { wait_seconds: 60 });
  assert.equal(n.stopped, true, 'an interrupted command still stops the node');
});

test('a reader that goes away (inbox | head) ends the output, not the command: no stack trace, nothing marked read', async () => {
  const { EventEmitter } = await import('node:events');
  // What a closed pipe does: the write fails after this turn, as an 'error' event.
  const closedPipe = () => {
    const s = new EventEmitter();
    s.writes = 0;
    s.write = () => {
      s.writes++;
      process.nextTick(() => s.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE' })));
      return false;
    };
    return s;
  };
  const inboxResult = { content: [{ type: 'text', text: '📬 1 of 1 message(s) (1 unread):' }], details: { mesh: { messages: [{ id: 'm1' }] } } };
  const n = fakeNode({ result: inboxResult, status: { connected: true } });
  const stdout = closedPipe();
  const stderr = sink();
  const code = await main(['inbox'], { stdout, stderr, env: { KARS_MESH_STATE: '/nonexistent/x' }, createNodeImpl: async () => n });
  assert.equal(code, EXIT.OK);
  assert.equal(stdout.writes, 1, 'nothing more written after the reader went away');
  assert.equal(stderr.text, 'kars-mesh: the output was cut short; the messages stay unread\n');
  assert.ok(!n.calls.some((c) => c.args.mark_read), 'nothing marked read that the user may not have seen');
});

test('offload-status asked again says where the offload is, not the model\'s "stop polling"', async () => {
  const again = {
    content: [{ type: 'text', text: "⏳ No change since last check 0s ago (offload still running, elapsed 12s). Stop polling — the result is reported when it arrives; check again on the user's next message." }],
    details: { mesh: { request_id: '0f3a9c1e-1111-2222-3333-444455556666', phase: 'running', no_change: true } },
  };
  const r = await mainWith(fakeNode({ result: again }), ['offload-status']);
  assert.equal(r.code, EXIT.OK);
  assert.equal(r.stdout, '⏳ Offload 0f3a9c1e: still running, nothing new since the last look. kars-mesh offload-status --wait 600 follows it.\n');
});

test('a pairing token pasted inside quotes still names its relay and registry', async () => {
  const { unquoteToken, tokenUrls } = await import('../js-host/cli.js');
  const json = JSON.stringify({ controller_amid: 'a'.repeat(32), relay_url: 'http://127.0.0.1:18083', registry_url: 'http://127.0.0.1:18082', secret: 's'.repeat(43) });
  const token = 'azcp_1_' + Buffer.from(json).toString('base64url');
  for (const pasted of [token, ` ${token}\n`, `"${token}"`, `'${token}'`, `\u201c${token}\u201d`, `"'${token}'"`, `\`${token}\``]) {
    assert.equal(unquoteToken(pasted), token, JSON.stringify(pasted.slice(0, 3)));
    assert.deepEqual(await tokenUrls(unquoteToken(pasted)), { relayUrl: 'http://127.0.0.1:18083', registryUrl: 'http://127.0.0.1:18082' });
  }
  // Quoted, the engine's token reader found no URLs: the node started on the default relay.
  assert.deepEqual(await tokenUrls(`"${token}"`), {});
  assert.equal(unquoteToken('"unbalanced'), '"unbalanced');
  // pair-with hands mesh_pair (and the URL reader) the unquoted token.
  assert.equal(plan(['pair-with', `"${token}"`], {}).run.args.token, token);
  // URLs as pasted: spaces around are dropped.
  assert.equal(plan(['id', '--relay', ' http://r:1 '], {}).run.node.relayUrl, 'http://r:1');
});

test('the console server refuses a relay or registry URL with credentials, without quoting it', async () => {
  const { startConsoleServer } = await import('../js-host/console-server.js');
  for (const [relayUrl, registryUrl, what] of [
    ['http://bob:hunter2@127.0.0.1:1', 'http://127.0.0.1:2', 'relay'],
    ['http://127.0.0.1:1', 'http://hunter2@127.0.0.1:2', 'registry'],
  ]) {
    await assert.rejects(startConsoleServer({ port: 0, relayUrl, registryUrl }), (e) => {
      assert.match(e.message, new RegExp(`the ${what} URL carries a user name or password`));
      assert.doesNotMatch(e.message, /hunter2|bob/);
      return true;
    });
  }
});

test('kars-mesh console names a relay or registry that is not a URL, and where it came from, and a --name no agent can have', async () => {
  const { mainConsole } = await import('../js-host/console-server.js');
  const cases = [
    [['console', '--port', '0', '--relay', 'bogus'], {}, /^kars-mesh: --relay must be a URL like http:\/\/127\.0\.0\.1:8083, not "bogus"/],
    [['console', '--port', '0', '--registry', '127.0.0.1:8082'], {}, /^kars-mesh: --registry must be a URL like http:\/\/127\.0\.0\.1:8082, not "127\.0\.0\.1:8082"/],
    [['console', '--port', '0'], { KARS_MESH_RELAY: 'relay host' }, /^kars-mesh: KARS_MESH_RELAY must be a URL like http:\/\/127\.0\.0\.1:8083, not "relay host"/],
    // A name the page would give every new identity, and the engine refuse.
    [['console', '--port', '0', '--name', 'two words'], {}, /^kars-mesh: --name "two words" cannot be an agent's name \(it contains a space or a control character: a name is one word, such as alice or laptop-claw\); other agents send to it/],
  ];
  for (const [argv, env, want] of cases) {
    let stderr = '';
    const code = await mainConsole(argv, { out: () => {}, err: (t) => (stderr += t), env });
    assert.equal(code, 2, stderr);
    assert.match(stderr, want);
    assert.doesNotMatch(stderr, /Invalid URL/);
  }
});

test('pair-with that timed out while the relay was never reached names the relay, not the controller', async () => {
  const json = JSON.stringify({ controller_amid: 'a'.repeat(32), relay_url: 'http://127.0.0.1:9', registry_url: 'http://127.0.0.1:10', secret: 's'.repeat(43) });
  const token = 'azcp_1_' + Buffer.from(json).toString('base64url');
  const timedOut = { content: [{ type: 'text', text: '❌ Pairing timed out after 30s: the controller did not answer.' }], details: { mesh: { error: 'Pairing timed out' } } };
  const down = { connected: false, relay_error: 'connect ECONNREFUSED 127.0.0.1:9' };
  let r = await mainWith(fakeNode({ result: timedOut, status: down }), ['pair-with', token]);
  assert.equal(r.code, EXIT.UNREACHABLE);
  assert.match(r.stderr, /the pairing request never reached the cluster: .*ECONNREFUSED 127\.0\.0\.1:9/);
  assert.match(r.stderr, /the relay URL http:\/\/127\.0\.0\.1:9 came from the token's relay_url/);
  // Connected: the controller's silence is the news, as before.
  r = await mainWith(fakeNode({ result: timedOut, status: { connected: true } }), ['pair-with', token]);
  assert.equal(r.code, EXIT.TOOL_ERROR);
  assert.doesNotMatch(r.stderr, /never reached the cluster/);
});

test('a state directory this user may not write says what to do, not only EACCES', async (t) => {
  const { skipTestUnlessCi } = await import('./harness/prereq.mjs');
  const root = process.getuid?.() === 0;
  const setpriv = fs.existsSync('/usr/bin/setpriv');
  if (skipTestUnlessCi(t, !root ? 'needs root (to run the CLI as another user)' : !setpriv ? "needs util-linux's setpriv" : null)) return;
  const dir = tmp(t);
  fs.chmodSync(dir, 0o755);
  const state = path.join(dir, 'st');
  fs.mkdirSync(state);
  fs.chownSync(state, 65534, 65534);
  fs.chmodSync(state, 0o500); // its owner's, read-only
  const r = await new Promise((resolve) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
    const child = spawn('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, 'id', '--state', state], { env: { ...clean, HOME: dir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stderr }));
  });
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /cannot create lock file .*EACCES.*\(this user may not write in .*st: make it writable for this user, or use another state directory\)/);
  assert.deepEqual(fs.readdirSync(state), [], 'nothing was written');
});

test('--state naming a local cluster\'s directory is refused: an identity there would sit beside the controller\'s', (t) => {
  const dir = tmp(t);
  fs.mkdirSync(path.join(dir, 'controller'));
  fs.writeFileSync(path.join(dir, 'controller', 'state.key'), Buffer.alloc(32), { mode: 0o600 });
  assert.throws(() => plan(['id', '--state', dir], {}), /is a kars-mesh cluster's directory \(kars-mesh cluster up --dir\), not an agent's state: give the agent its own --state DIR/);
  assert.equal(plan(['id', '--state', path.join(dir, 'agent')], {}).run.node.stateDir, path.join(dir, 'agent'));
});

test('offload-status follows for as long as --wait asks (an offload may run 24 h); inbox waits at most 300 s', () => {
  assert.equal(plan(['offload-status', '--wait', '3600'], {}).run.waitSeconds, 3600);
  assert.equal(plan(['inbox', '--wait', '300'], {}).run.waitSeconds, 300);
});

test('an endpoints.json that pair-with wrote and something damaged is named, not passed over for the defaults', (t) => {
  const dir = tmp(t);
  const file = path.join(dir, 'endpoints.json');
  fs.writeFileSync(file, '{"relay_url": "http://127.0.0.1:9', { mode: 0o600 });
  let node = plan(['id', '--state', dir], {}).run.node;
  assert.equal(node.relayUrl, 'http://127.0.0.1:8083', 'the default, as before');
  assert.match(node.endpoints.problem, /endpoints\.json cannot be read \(.*\); the relay and registry come from flags, the environment or the defaults\. Run pair-with again, or remove the file/);
  fs.writeFileSync(file, '{"relay_url": "http://127.0.0.1:9"}');
  node = plan(['id', '--state', dir], {}).run.node;
  assert.equal(node.relayUrl, 'http://127.0.0.1:9');
  assert.match(node.endpoints.problem, /does not name both relay_url and registry_url/);
  fs.writeFileSync(file, '{"relay_url": "http://127.0.0.1:9", "registry_url": "http://127.0.0.1:10"}');
  node = plan(['id', '--state', dir], {}).run.node;
  assert.equal(node.endpoints.problem, undefined);
  assert.equal(node.registryUrl, 'http://127.0.0.1:10');
});

test('a start that fails says why once: the core\'s error lines are in the error, not printed before it too', async (t) => {
  const dir = tmp(t);
  const state = path.join(dir, 'state');
  const nowhere = ['--relay', 'http://127.0.0.1:1', '--registry', 'http://127.0.0.1:1'];
  const first = await run(['id', '--state', state, ...nowhere], { home: dir });
  assert.match(first.stdout, /did:mesh:/, first.stderr);
  fs.writeFileSync(path.join(state, 'state.key'), Buffer.alloc(32, 7), { mode: 0o600 });
  const r = await run(['id', '--state', state, ...nowhere], { home: dir });
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stderr.split('sealed record failed authentication').length - 1, 1, r.stderr);
  assert.match(r.stderr, /^kars-mesh: the kars-mesh core could not open the identity in .*: the stored identity could not be opened: sealed record failed authentication/);
});

/** The pids under `pid` (its children, theirs, ...), from /proc. */
function descendants(pid) {
  const kids = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) kids.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return kids.flatMap((k) => [k, ...descendants(k)]);
}

test('a pairing token given as an argument leaves the process list once kars-mesh runs (directly, and through the wrapper an older Node takes)', { timeout: 60_000 }, async (t) => {
  const dir = tmp(t);
  const secret = 'pQ7vX2sEcReT_doNotShow_' + 'x'.repeat(20);
  const token = 'azcp_1_' + Buffer.from(JSON.stringify({ controller_amid: '4V8Nn3Vko4WQiTDmn4gniAsKjNnF', relay_url: 'http://127.0.0.1:9', registry_url: 'http://127.0.0.1:9', secret })).toString('base64url');
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  // The system Node, if it is older than node:sqlite: bin/kars-mesh then starts Node 24 under it.
  const system = spawn('node', ['-p', 'process.versions.node'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let version = '';
  system.stdout.on('data', (d) => (version += d));
  const systemNode = await new Promise((r) => system.on('close', (code) => r(code === 0 ? version.trim() : null)));
  const older = systemNode && systemNode.split('.').map(Number).reduce((a, n, i) => a || (i === 0 ? n < 22 : i === 1 && systemNode.startsWith('22.') ? n < 13 : false), false);
  const ways = [['direct', process.execPath], ...(older ? [['wrapper', 'node']] : [])];
  t.diagnostic(`system node ${systemNode ?? 'none'}: ${ways.map(([w]) => w).join(' and ')}`);
  for (const [way, exe] of ways) {
    const child = spawn(exe, [BIN, '--state', path.join(dir, way), 'pair-with', token], { env: { ...clean, HOME: dir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const closed = new Promise((r) => child.on('close', r));
    // Long enough for the CLI to start (its core loads after the title is set).
    await new Promise((r) => setTimeout(r, 1500));
    const pids = [child.pid, ...descendants(child.pid)];
    const lines = pids.map((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0+/g, ' ').trim();
      } catch {
        return '';
      }
    });
    child.kill('SIGTERM');
    await closed;
    assert.equal(pids.length, way === 'wrapper' ? 2 : 1, `${way}: processes ${pids}: ${lines.join(' | ')}\n${stderr}`);
    for (const line of lines) {
      assert.ok(line, `${way}: the process ended before it was read:\n${stderr}`);
      assert.ok(!line.includes(secret.slice(0, 12)) && !line.includes(token.slice(0, 30)), `${way}: the token is in the process list: ${line}`);
      assert.match(line, /kars-mesh .*pair-with azcp_…/, `${way}: ${line}`);
    }
  }
});
