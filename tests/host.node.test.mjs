// js-host/node-host.js: createNode on the real core (identity, lock, restart),
// and the event loop's command execution against a scripted engine with
// loopback WebSocket and HTTP servers (no other network).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { once } from 'node:events';
import { WebSocket, WebSocketServer } from 'ws';
import { createNode, engineThreadFromEnv } from '../js-host/node-host.js';
// A loopback port nothing listens on.
import { freePort as closedPort } from './harness/servers.mjs';
import { openStateDir } from '../js-host/state-db.js';
import { readRecord, recordKeys, dbFile } from './harness/state-db.mjs';

function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'state');
}


const quiet = () => {};

// ---------------------------------------------------------------------------
// The real core

test('real core: mesh_identity answers a did:mesh: DID; one process per state dir; same DID after restart', async (t) => {
  const stateDir = tmpDir(t);
  const port = await closedPort();
  const opts = { stateDir, relayUrl: `http://127.0.0.1:${port}`, registryUrl: `http://127.0.0.1:${port}`, log: quiet };

  const first = await createNode(opts);
  let firstStopped = false;
  t.after(() => firstStopped || first.stop());
  assert.match(first.did, /^did:mesh:[0-9a-f]{32}$/);
  const r = await first.callTool('mesh_identity', {});
  assert.equal(r.details.mesh.did, first.did);
  assert.match(r.content[0].text, /did:mesh:/);

  await assert.rejects(createNode(opts), (e) => {
    assert.match(e.message, new RegExp(`state directory .* is in use by process ${process.pid} \\(one process per identity`));
    return true;
  });

  await first.stop();
  firstStopped = true;
  assert.equal(first.stopped, true);
  await assert.rejects(first.callTool('mesh_identity', {}), /stopped/);
  assert.equal(fs.existsSync(path.join(stateDir, 'lock')), false, 'stop() released the lock');

  const second = await createNode(opts);
  t.after(() => second.stop());
  assert.equal(second.did, first.did, 'the identity survives a restart');
});

test('real core: a command that ends cleanly reports no death of its engine thread', { timeout: 60_000 }, async (t) => {
  // The worker's 'closed' message and its exit travel apart; taking the exit
  // first made about every second `kars-mesh id` print "the engine thread
  // ended unexpectedly (code 0)" after a clean stop.
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const bin = path.join(import.meta.dirname, '..', 'bin', 'kars-mesh');
  const stateDir = tmpDir(t);
  const port = await closedPort();
  for (let i = 0; i < 12; i++) {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, '--state', stateDir, '--relay', `http://127.0.0.1:${port}`, '--registry', `http://127.0.0.1:${port}`, 'id'], { timeout: 20_000 });
    assert.match(stdout, /did:mesh:[0-9a-f]{32}/);
    assert.equal(stderr, '', `run ${i + 1}: ${stderr}`);
  }
});

test('KARS_MESH_ENGINE_THREAD: main runs the real engine on the calling thread (a tool answered within the turn); worker or unset, its own thread; anything else named, and the worker used', { timeout: 60_000 }, async (t) => {
  const lines = [];
  const log = (level, m) => lines.push(`${level}: ${m}`);
  assert.equal(engineThreadFromEnv(undefined, log), 'worker');
  assert.equal(engineThreadFromEnv('', log), 'worker');
  assert.equal(engineThreadFromEnv('worker', log), 'worker');
  assert.deepEqual(lines, [], 'the default says nothing');
  assert.equal(engineThreadFromEnv('main', log), 'main');
  assert.match(lines.at(-1), /^info: .*KARS_MESH_ENGINE_THREAD=main.*a large offload stalls it/);
  assert.equal(engineThreadFromEnv('gateway', log), 'worker');
  assert.match(lines.at(-1), /^warn: .*KARS_MESH_ENGINE_THREAD="gateway" is neither main nor worker; the engine runs in its own thread/);

  const saved = process.env.KARS_MESH_ENGINE_THREAD;
  t.after(() => {
    if (saved === undefined) delete process.env.KARS_MESH_ENGINE_THREAD;
    else process.env.KARS_MESH_ENGINE_THREAD = saved;
  });
  const port = await closedPort();
  /** Is a mesh_identity call answered before the event loop's next turn (only an engine on this thread can)? */
  const answeredWithinTurn = async (env) => {
    process.env.KARS_MESH_ENGINE_THREAD = env;
    const logs = [];
    const node = await createNode({ stateDir: tmpDir(t), relayUrl: `http://127.0.0.1:${port}`, registryUrl: `http://127.0.0.1:${port}`, log: (l, m) => logs.push(`${l}: ${m}`) });
    try {
      await node.callTool('mesh_identity', {}); // the engine is up and answering
      const call = node.callTool('mesh_identity', {});
      const first = await Promise.race([call.then(() => 'answered'), new Promise((r) => setImmediate(() => r('next turn')))]);
      const r = await call;
      assert.equal(r.details.mesh.did, node.did);
      return { first, logs };
    } finally {
      await node.stop();
    }
  };
  const main = await answeredWithinTurn('main');
  assert.equal(main.first, 'answered', 'an engine on this thread answers within the turn');
  assert.ok(main.logs.some((l) => l.startsWith('info: ') && l.includes('KARS_MESH_ENGINE_THREAD=main')), main.logs.join('\n'));
  const bad = await answeredWithinTurn('gateway');
  assert.ok(bad.logs.some((l) => l.startsWith('warn: ') && l.includes('KARS_MESH_ENGINE_THREAD="gateway"')), bad.logs.join('\n'));
});

test('real core: the identity record on disk is sealed, not plaintext', async (t) => {
  const stateDir = tmpDir(t);
  const node = await createNode({ stateDir, log: quiet });
  await node.stop();
  const file = dbFile(stateDir);
  const sealed = readRecord(stateDir, 'identity');
  assert.equal(sealed[0], 2, 'version byte (bound to its storage key)');
  assert.equal(sealed.length, 1 + 12 + 32 + 16, 'version || nonce || sealed seed || tag');
  const key = fs.readFileSync(path.join(stateDir, 'state.key'));
  assert.equal(sealed.includes(key), false, 'the state key is not stored beside the record');
  if (process.platform !== 'win32') {
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(stateDir).mode & 0o777, 0o700);
  }
});

test('real core: settings the engine cannot use are named as settings, not as the identity', async (t) => {
  const stateDir = tmpDir(t);
  const port = await closedPort();
  const base = { stateDir, relayUrl: `http://127.0.0.1:${port}`, registryUrl: `http://127.0.0.1:${port}`, log: quiet };
  for (const [opts, re] of [
    [{ acceptSessions: 'everyone' }, /^the kars-mesh node cannot start with these settings: accept_sessions: "everyone" is neither "all" nor a DID/],
    [{ registryUrl: `ws://127.0.0.1:${port}` }, /^the kars-mesh node cannot start with these settings: registry URL .* must start with http:\/\/ or https:\/\//],
    [{ relayUrl: `https://bob:hunter2@127.0.0.1:${port}` }, /^the kars-mesh node cannot start with these settings: the relay URL carries a user name or password/],
  ]) {
    await assert.rejects(createNode({ ...base, ...opts }), (e) => {
      assert.match(e.message, re);
      assert.doesNotMatch(e.message, /could not open the identity|not valid JSON|hunter2/);
      return true;
    });
    assert.equal(fs.existsSync(path.join(stateDir, 'lock')), false, 'the failed start released the lock');
  }
  // The same directory starts with usable settings, and "ALL" is "all".
  const node = await createNode({ ...base, acceptSessions: 'ALL' });
  t.after(() => node.stop());
  assert.match(node.did, /^did:mesh:/);
});

test('real core: a replaced state key is a clear start error, and the identity is left alone', async (t) => {
  const stateDir = tmpDir(t);
  await (await createNode({ stateDir, log: quiet })).stop();
  const before = readRecord(stateDir, 'identity');
  fs.writeFileSync(path.join(stateDir, 'state.key'), Buffer.alloc(32, 9), { mode: 0o600 });
  await assert.rejects(createNode({ stateDir, log: quiet }), (e) => {
    assert.equal(e.name, 'StateDirError');
    assert.match(e.message, /could not open the identity/);
    assert.ok(!e.message.includes(Buffer.alloc(32, 9).toString('base64')), 'no key material in the error');
    return true;
  });
  assert.deepEqual(readRecord(stateDir, 'identity'), before);
  assert.equal(fs.existsSync(path.join(stateDir, 'lock')), false, 'the failed start released the lock');
});

// ---------------------------------------------------------------------------
// A scripted engine: exercises the host's command execution

/**
 * createNode with a fake core. `script(event, host, ctx)` returns commands;
 * mesh_identity is answered automatically. `ctx.events` records every event.
 */
async function scripted(t, script, extra = {}) {
  const events = [];
  const ctx = { events, calls: new Map() };
  let hostFns;
  const loadCoreImpl = async (fns) => {
    hostFns = fns;
    return {
      engine: {
        handle(ev) {
          events.push(ev);
          if (ev.tag === 'start') {
            ctx.config = JSON.parse(ev.val);
            return [];
          }
          if (ev.tag === 'tool-call' && ev.val.tool === 'mesh_identity') {
            return [result(ev.val.callId, { did: 'did:mesh:' + '0'.repeat(32) })];
          }
          if (ev.tag === 'tool-call') ctx.calls.set(ev.val.tool, ev.val.callId);
          return script(ev, hostFns, ctx) ?? [];
        },
      },
      toolkit: {},
    };
  };
  const stateDir = tmpDir(t);
  const logs = [];
  const node = await createNode({ stateDir, loadCoreImpl, log: (l, m) => logs.push(`${l}: ${m}`), ...extra });
  t.after(() => node.stop());
  return { node, ctx, events, stateDir, logs, host: () => hostFns };
}

function result(callId, mesh, text = 'ok') {
  return { tag: 'tool-result', val: { callId, resultJson: JSON.stringify({ content: [{ type: 'text', text }], details: { mesh } }) } };
}

test('scripted: start config carries the options and a base64 state key', async (t) => {
  const { ctx, stateDir } = await scripted(t, () => [], {
    relayUrl: 'http://127.0.0.1:1',
    registryUrl: 'http://127.0.0.1:2',
    name: 'alice',
    capabilities: ['x'],
    trustedPlaintext: ['did:mesh:' + '1'.repeat(32)],
    acceptSessions: 'all',
  });
  const key = fs.readFileSync(path.join(stateDir, 'state.key'));
  assert.deepEqual(ctx.config, {
    state_key: key.toString('base64'),
    relay_url: 'http://127.0.0.1:1',
    registry_url: 'http://127.0.0.1:2',
    name: 'alice',
    capabilities: ['x'],
    trusted_plaintext: ['did:mesh:' + '1'.repeat(32)],
    accept_sessions: 'all',
    // Where this host reads the relay token from, for the engine's 4003 text.
    relay_token_hint: "set KARS_MESH_RELAY_TOKEN in this process's environment to the relay's AGENTMESH_RELAY_TOKEN",
  });
});

test('scripted: store/erase land on disk before the next command; reads see them', async (t) => {
  const { node, stateDir } = await scripted(t, (ev, host) => {
    if (ev.tag !== 'tool-call') return [];
    const { callId, tool } = ev.val;
    if (tool === 'write') {
      return [
        { tag: 'store', val: ['sessions/did:mesh:a', new Uint8Array([1, 2, 3])] },
        { tag: 'store', val: ['tmp', new Uint8Array([9])] },
        { tag: 'erase', val: 'tmp' },
        result(callId, { wrote: true }),
      ];
    }
    if (tool === 'read') {
      return [result(callId, {
        got: [...host.storage.get('sessions/did:mesh:a')],
        gone: host.storage.get('tmp') === undefined,
        list: host.storage.list('sessions/'),
      })];
    }
    return [];
  });
  // The tool result is the last command: when it resolves, the stores are on disk.
  const w = await node.callTool('write', {});
  assert.equal(w.details.mesh.wrote, true);
  assert.deepEqual([...readRecord(stateDir, 'sessions/did:mesh:a')], [1, 2, 3], 'committed: another connection reads it');
  assert.equal(readRecord(stateDir, 'tmp'), undefined);
  const r = await node.callTool('read', {});
  assert.deepEqual(r.details.mesh, { got: [1, 2, 3], gone: true, list: ['sessions/did:mesh:a'] });
});

test('scripted: WebSocket open, frames both ways in order, close reported once', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  t.after(() => wss.close());
  const serverGot = [];
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      serverGot.push(data.toString());
      ws.send(`echo:${data}`);
    });
  });
  const url = `ws://127.0.0.1:${wss.address().port}/ws`;
  const frames = [];
  const { node, events } = await scripted(t, (ev, _host, ctx) => {
    switch (ev.tag) {
      case 'tool-call':
        // `again`: a second socket, opened, used and closed the same way.
        return [{ tag: 'socket-open', val: ev.val.tool === 'again' ? [8, url] : [7, url] }];
      case 'socket-opened':
        if (ev.val === 8) return [{ tag: 'socket-send', val: { socket: 8, text: 'c' } }];
        return [
          { tag: 'socket-send', val: { socket: 7, text: 'a' } },
          { tag: 'socket-send', val: { socket: 7, text: 'b' } },
          { tag: 'socket-send', val: { socket: 99, text: 'to a socket that does not exist' } },
        ];
      case 'socket-frame':
        if (ev.val.socket === 8) return [{ tag: 'socket-close', val: { socket: 8, code: 1000, reason: 'bye' } }];
        frames.push(ev.val.text);
        return frames.length === 2 ? [{ tag: 'socket-close', val: { socket: 7, code: 1000, reason: 'bye' } }] : [];
      case 'socket-closed':
        if (ev.val.socket === 8) return [result(ctx.calls.get('again'), {})];
        return [result(ctx.calls.get('ws'), { frames, code: ev.val.code, socket: ev.val.socket })];
      default:
        return [];
    }
  });
  const r = await node.callTool('ws', {});
  assert.deepEqual(r.details.mesh, { frames: ['echo:a', 'echo:b'], code: 1000, socket: 7 });
  assert.deepEqual(serverGot, ['a', 'b']);
  // A whole second socket (connect, a frame each way, close) through the same
  // host afterwards: what the host still had to report of socket 7 (its
  // close event comes after the result when the host reports too early)
  // came before that ended, on the same queue.
  await node.callTool('again', {});
  assert.deepEqual(serverGot, ['a', 'b', 'c']);
  const of7 = (tag) => events.filter((e) => e.tag === tag && (e.val === 7 || e.val?.socket === 7)).length;
  assert.equal(of7('socket-closed'), 1);
  assert.equal(of7('socket-opened'), 1);
});

test('scripted: the relay link does not offer permessage-deflate (the relay would deflate every frame of base64 ciphertext)', async (t) => {
  // A server that would take the extension if offered, as the AgentMesh
  // relay (uvicorn) does.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: true });
  await once(wss, 'listening');
  t.after(() => wss.close());
  const offered = [];
  wss.on('connection', (ws, req) => {
    offered.push({ header: req.headers['sec-websocket-extensions'] ?? null, taken: ws.extensions });
    ws.on('message', (data) => ws.send(`echo:${data}`));
  });
  const url = `ws://127.0.0.1:${wss.address().port}/ws`;
  const { node } = await scripted(t, (ev, _host, ctx) => {
    switch (ev.tag) {
      case 'tool-call':
        return [{ tag: 'socket-open', val: [3, url] }];
      case 'socket-opened':
        return [{ tag: 'socket-send', val: { socket: 3, text: 'x'.repeat(4096) } }];
      case 'socket-frame':
        return [{ tag: 'socket-close', val: { socket: 3, code: 1000, reason: 'done' } }];
      case 'socket-closed':
        return [result(ctx.calls.get('ws'), { code: ev.val.code })];
      default:
        return [];
    }
  });
  const r = await node.callTool('ws', {});
  assert.deepEqual(r.details.mesh, { code: 1000 });
  assert.deepEqual(offered, [{ header: null, taken: '' }]);
});

test('scripted: a failed connect is socket-closed 1006 with the error as reason', async (t) => {
  const port = await closedPort();
  const { node } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call') return [{ tag: 'socket-open', val: [1, `ws://127.0.0.1:${port}/ws`] }];
    if (ev.tag === 'socket-opened') return [result(ctx.calls.get('ws'), { opened: true })];
    if (ev.tag === 'socket-closed') return [result(ctx.calls.get('ws'), ev.val)];
    return [];
  });
  const before = node.ioFailures;
  const r = await node.callTool('ws', {});
  assert.equal(r.details.mesh.socket, 1);
  assert.equal(r.details.mesh.code, 1006);
  assert.ok(r.details.mesh.reason.length > 0, 'the reason says why');
  assert.equal(node.ioFailures, before + 1);
});

test('scripted: a relay address that answers HTTP, not a WebSocket, is named as such', async (t) => {
  const srv = http.createServer((_req, res) => {
    res.statusCode = 404;
    res.end('not found');
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.after(() => srv.close());
  const { node } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call') return [{ tag: 'socket-open', val: [1, `ws://127.0.0.1:${srv.address().port}/ws`] }];
    if (ev.tag === 'socket-opened') return [result(ctx.calls.get('ws'), { opened: true })];
    if (ev.tag === 'socket-closed') return [result(ctx.calls.get('ws'), ev.val)];
    return [];
  });
  const r = await node.callTool('ws', {});
  assert.equal(r.details.mesh.code, 1006);
  assert.match(r.details.mesh.reason, /^the server answered HTTP 404 instead of opening a WebSocket: is this the relay's address\?$/);
});

test('scripted: http-request reports any status with the body, network errors and timeouts as http-failed', async (t) => {
  const seen = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, auth: req.headers.authorization, ct: req.headers['content-type'], body });
      if (req.url === '/slow') return; // never answers
      res.writeHead(req.url === '/missing' ? 404 : 201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ echo: body }));
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.after(() => {
    srv.closeAllConnections();
    srv.close();
  });
  const base = `http://127.0.0.1:${srv.address().port}`;
  const dead = await closedPort();
  const got = new Map();
  const { node } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call') {
      return [
        { tag: 'http-request', val: { id: 1n, method: 'POST', url: `${base}/v1/agents`, headers: [['Authorization', 'Ed25519-Timestamp x'], ['Content-Type', 'application/json']], body: new Uint8Array(Buffer.from('{"a":1}')), timeoutMs: 5000 } },
        { tag: 'http-request', val: { id: 2n, method: 'GET', url: `${base}/missing`, headers: [], timeoutMs: 5000 } },
        { tag: 'http-request', val: { id: 3n, method: 'GET', url: `http://127.0.0.1:${dead}/`, headers: [], timeoutMs: 5000 } },
        { tag: 'http-request', val: { id: 4n, method: 'GET', url: `${base}/slow`, headers: [], timeoutMs: 150 } },
      ];
    }
    if (ev.tag === 'http-response' || ev.tag === 'http-failed') {
      got.set(ev.val.id, ev);
      if (got.size === 4) return [result(ctx.calls.get('http'), {})];
    }
    return [];
  });
  const before = node.ioFailures;
  await node.callTool('http', {}, { timeoutMs: 10_000 });
  const r1 = got.get(1n);
  assert.equal(r1.tag, 'http-response');
  assert.equal(r1.val.status, 201);
  assert.ok(r1.val.body instanceof Uint8Array);
  assert.deepEqual(JSON.parse(Buffer.from(r1.val.body).toString()), { echo: '{"a":1}' });
  const post = seen.find((s) => s.method === 'POST');
  assert.deepEqual(post, { method: 'POST', url: '/v1/agents', auth: 'Ed25519-Timestamp x', ct: 'application/json', body: '{"a":1}' });
  assert.equal(got.get(2n).tag, 'http-response');
  assert.equal(got.get(2n).val.status, 404, '4xx is a response, not a failure');
  assert.equal(got.get(3n).tag, 'http-failed');
  assert.match(got.get(3n).val.message, /ECONNREFUSED|fetch failed/);
  assert.equal(got.get(4n).tag, 'http-failed');
  assert.match(got.get(4n).val.message, /timed out after 150 ms/);
  assert.equal(node.ioFailures, before + 2);
});

test('scripted: timers fire at their wall-clock time, are replaced by id and can be cancelled', async (t) => {
  const fired = [];
  const { node } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call') {
      const now = Date.now();
      return [
        { tag: 'timer-set', val: [1n, BigInt(now + 60)] },
        { tag: 'timer-set', val: [2n, BigInt(now + 40)] },
        { tag: 'timer-cancel', val: 2n },
        { tag: 'timer-set', val: [3n, BigInt(now + 5000)] },
        { tag: 'timer-set', val: [3n, BigInt(now + 20)] }, // replaces the 5 s one
        { tag: 'timer-set', val: [4n, BigInt(now - 1000)] }, // in the past: fires at once
      ];
    }
    if (ev.tag === 'timer-fired') {
      fired.push(ev.val);
      if (ev.val === 1n) return [result(ctx.calls.get('timers'), {})];
    }
    return [];
  });
  const t0 = Date.now();
  await node.callTool('timers', {}, { timeoutMs: 5000 });
  assert.ok(Date.now() - t0 >= 55, 'timer 1 did not fire early');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(fired, [4n, 3n, 1n]);
});

test('scripted: an aborted or timed-out call rejects and sends tool-abort', async (t) => {
  const { node, events } = await scripted(t, () => []);
  const ctl = new AbortController();
  const p = node.callTool('wait', {}, { signal: ctl.signal });
  ctl.abort();
  await assert.rejects(p, { name: 'AbortError' });
  const aborts = () => events.filter((e) => e.tag === 'tool-abort').map((e) => e.val);
  const callIds = () => events.filter((e) => e.tag === 'tool-call' && e.val.tool === 'wait').map((e) => e.val.callId);
  assert.deepEqual(aborts(), callIds());
  await assert.rejects(node.callTool('wait', {}, { timeoutMs: 30 }), { code: 'KARS_MESH_TIMEOUT' });
  assert.deepEqual(aborts(), callIds());
  assert.equal(aborts().length, 2);
  // An already aborted signal: nothing reaches the core.
  await assert.rejects(node.callTool('wait', {}, { signal: AbortSignal.abort() }), { name: 'AbortError' });
  assert.equal(callIds().length, 2);
});

test('scripted: a trap kills the node: pending calls reject, nothing else reaches the core, the lock is released', async (t) => {
  const { node, events, stateDir, logs } = await scripted(t, (ev) => {
    if (ev.tag === 'tool-call' && ev.val.tool === 'crash') throw new WebAssembly.RuntimeError('unreachable');
    return [];
  });
  const pendingCall = node.callTool('wait', {});
  await assert.rejects(node.callTool('crash', {}), { code: 'KARS_MESH_CORE_TRAP' });
  await assert.rejects(pendingCall, /core failed .*unreachable.*restart/);
  assert.ok((await node.closed) instanceof Error);
  assert.equal(node.stopped, true);
  const n = events.length;
  await assert.rejects(node.callTool('wait', {}), { code: 'KARS_MESH_CORE_TRAP' });
  await node.stop();
  assert.equal(events.length, n, 'a dead core gets no more events, not even stop');
  assert.ok(logs.some((l) => l.startsWith('error:')));
  openStateDir(stateDir).close(); // the lock is free
});

test('scripted: a failing import (host fault) discards that call\'s commands and stops the node', async (t) => {
  const { node, stateDir } = await scripted(t, (ev, host, ctx) => {
    if (ev.tag === 'tool-call' && ev.val.tool === 'fault') {
      host.random(-1); // node:crypto throws; the wrapper must not
      return [{ tag: 'store', val: ['should-not-land', new Uint8Array([1])] }, result(ctx.calls.get('fault'), {})];
    }
    return [];
  });
  await assert.rejects(node.callTool('fault', {}), { code: 'KARS_MESH_HOST_FAULT' });
  assert.equal(readRecord(stateDir, 'should-not-land'), undefined);
});

test('scripted: a failed durable write stops the node before later commands', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  t.after(() => wss.close());
  let connections = 0;
  let probed;
  const probeArrived = new Promise((r) => (probed = r));
  wss.on('connection', (_ws, req) => (req.url === '/probe' ? probed() : connections++));
  const { node } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call') {
      return [
        { tag: 'store', val: ['x/'.repeat(600), new Uint8Array([1])] }, // a key over the 1,024-byte limit
        { tag: 'socket-open', val: [1, `ws://127.0.0.1:${wss.address().port}/ws`] },
        result(ctx.calls.get('w'), {}),
      ];
    }
    return [];
  });
  await assert.rejects(node.callTool('w', {}), { code: 'KARS_MESH_STORE' });
  assert.equal((await node.closed)?.code, 'KARS_MESH_STORE', 'the node died of the failed store');
  // A connection opened now reaches the server; one the node had opened
  // before its death would have reached it first.
  const probe = new WebSocket(`ws://127.0.0.1:${wss.address().port}/probe`);
  await Promise.all([probeArrived, once(probe, 'open')]);
  probe.terminate();
  assert.equal(connections, 0, 'the command after the failed store was not carried out');
});

test('scripted: stop() feeds stop, carries out its commands, waits for the close, then goes quiet', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  t.after(() => wss.close());
  const serverGot = [];
  let closeCode;
  const closed = new Promise((resolve) => {
    wss.on('connection', (ws) => {
      ws.on('message', (d) => serverGot.push(d.toString()));
      ws.on('close', (code) => {
        closeCode = code;
        resolve();
      });
    });
  });
  const { node, events, stateDir } = await scripted(t, (ev, _h, ctx) => {
    if (ev.tag === 'tool-call' && ev.val.tool === 'connect') return [{ tag: 'socket-open', val: [3, `ws://127.0.0.1:${wss.address().port}/ws`] }];
    if (ev.tag === 'socket-opened') return [result(ctx.calls.get('connect'), {})];
    if (ev.tag === 'stop') {
      return [
        { tag: 'socket-send', val: { socket: 3, text: '{"type":"disconnect"}' } },
        { tag: 'socket-close', val: { socket: 3, code: 1000, reason: 'client disconnect' } },
        { tag: 'store', val: ['last', new Uint8Array([4])] },
        result(ctx.calls.get('wait'), { settled: 'by stop' }),
      ];
    }
    return [];
  }, { stopTimeoutMs: 30_000 });
  await node.callTool('connect', {});
  const waiting = node.callTool('wait', {});
  const neverAnswered = assert.rejects(node.callTool('other', {}), { code: 'KARS_MESH_STOPPED' });
  const t0 = Date.now();
  await node.stop();
  // It waited for the close, not out its 30 s bound for one.
  const took = Date.now() - t0;
  assert.ok(took < 10_000, `stop took ${took} ms`);
  assert.deepEqual((await waiting).details.mesh, { settled: 'by stop' });
  await neverAnswered;
  await closed;
  assert.deepEqual(serverGot, ['{"type":"disconnect"}']);
  assert.equal(closeCode, 1000);
  assert.ok(readRecord(stateDir, 'last'));
  assert.equal(events.filter((e) => e.tag === 'stop').length, 1);
  assert.equal(events.at(-1).tag, 'stop', 'nothing reaches the core after stop');
  await node.stop(); // idempotent
  assert.equal(fs.existsSync(path.join(stateDir, 'lock')), false);
});

test('scripted: stop() closes sockets the core left open, bounded by stopTimeoutMs', async (t) => {
  // A server that accepts the TCP connection and the upgrade but never answers a close.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  t.after(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  wss.on('connection', (ws) => {
    ws._socket.pause(); // never reads the close frame
  });
  const { node } = await scripted(
    t,
    (ev, _h, ctx) => {
      if (ev.tag === 'tool-call') return [{ tag: 'socket-open', val: [1, `ws://127.0.0.1:${wss.address().port}/ws`] }];
      if (ev.tag === 'socket-opened') return [result(ctx.calls.get('connect'), {})];
      return [];
    },
    { stopTimeoutMs: 3000 },
  );
  await node.callTool('connect', {});
  const t0 = Date.now();
  await node.stop();
  const took = Date.now() - t0;
  // Its own bound, not the default 1.5 s, and not until the close gives up
  // (the ws package's, 30 s).
  assert.ok(took >= 2900 && took < 15_000, `stop waited about stopTimeoutMs (${took} ms)`);
});
