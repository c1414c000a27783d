// The relay link of a node with the real core (its engine in the worker
// thread, the link on the thread that serves the host), as a user meets it:
//   - the link offers no permessage-deflate (the relay would deflate every
//     frame of base64 ciphertext), and a relay frame reaches the engine;
//   - a relay that cannot be reached counts as an I/O failure, and the core
//     keeps trying on its timers until the relay is there;
//   - an open link keeps a Node process up, and a stopped node lets the
//     process end by itself.
// The scripted-core twins (tests/host.node.test.mjs) cover the same host
// with a test's core on the main thread.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';
import { createNode } from '../js-host/node-host.js';
// A loopback port nothing listens on.
import { freePort as closedPort } from './harness/servers.mjs';

function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-link-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Resolves once `cond()` (which may return a promise) holds, polled, or fails naming `what` after `ms`. */
async function until(cond, what, ms = 15_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A stand-in relay: a `ws` server that would take permessage-deflate if it
 * were offered, as the AgentMesh relay (uvicorn) does. It records each
 * connection's offer, its socket (to send from) and the frames it gets.
 */
async function standInRelay(t) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: true });
  await once(wss, 'listening');
  const seen = { offers: [], frames: [], sockets: [] };
  wss.on('connection', (ws, req) => {
    seen.offers.push({ path: req.url, header: req.headers['sec-websocket-extensions'] ?? null, taken: ws.extensions });
    seen.sockets.push(ws);
    ws.on('message', (data) => {
      let f;
      try { f = JSON.parse(String(data)); } catch { return; }
      seen.frames.push(f);
    });
  });
  t.after(() => new Promise((r) => {
    for (const ws of seen.sockets) ws.terminate();
    wss.close(() => r());
  }));
  return { url: `http://127.0.0.1:${wss.address().port}`, seen };
}

test('real core: the relay link offers no permessage-deflate, and the core speaks over it', { timeout: 60_000 }, async (t) => {
  const dir = tmpDir(t);
  const relay = await standInRelay(t);
  const registry = `http://127.0.0.1:${await closedPort()}`;
  const node = await createNode({ stateDir: path.join(dir, 'state'), relayUrl: relay.url, registryUrl: registry, name: 'link', log: () => {} });
  t.after(() => node.stop());
  // The core opens its relay link at start and names itself on it.
  await until(() => relay.seen.frames.some((f) => f.type === 'connect'), "the core's connect frame on the relay link");
  assert.deepEqual(relay.seen.offers.map((o) => ({ header: o.header, taken: o.taken })), [{ header: null, taken: '' }]);
  assert.match(relay.seen.offers[0].path, /\/ws$/);
  const connect = relay.seen.frames.find((f) => f.type === 'connect');
  assert.equal(connect.from, node.did);
  assert.equal(node.ioFailures > 0, true, 'the registry (a closed port) failed: counted');
  // A frame from the relay reaches the engine: one that is not
  // JSON is counted as malformed (mesh_identity's stats), not ignored.
  const before = (await node.callTool('mesh_identity', {})).details.mesh.stats.malformed;
  relay.seen.sockets[0].send('not json');
  let after = before;
  const malformed = async () => (after = (await node.callTool('mesh_identity', {})).details.mesh.stats.malformed);
  await until(async () => (await malformed()) !== before, 'the relay frame at the engine', 10_000);
  assert.equal(after, before + 1, 'the relay frame reached the engine');
});

test('real core: a relay that cannot be reached counts as an I/O failure, and the core tries again', { timeout: 60_000 }, async (t) => {
  const dir = tmpDir(t);
  const port = await closedPort();
  // A registry that never answers: its requests fail only after the core's
  // 10 s HTTP timeout, so the failures counted before that are the relay's.
  const hang = http.createServer(() => {});
  hang.listen(0, '127.0.0.1');
  await once(hang, 'listening');
  t.after(() => {
    hang.closeAllConnections();
    hang.close();
  });
  const registry = `http://127.0.0.1:${hang.address().port}`;
  const t0 = Date.now();
  const node = await createNode({ stateDir: path.join(dir, 'state'), relayUrl: `http://127.0.0.1:${port}`, registryUrl: registry, name: 'nolink', log: () => {} });
  t.after(() => node.stop());
  await until(() => node.ioFailures >= 2, 'two failed relay connects (the second on a reconnect timer)', 8_000);
  assert.ok(Date.now() - t0 < 9_500, 'counted before any registry request could time out');
  // Now a relay comes up on that port: the core's next try (on its timer) opens the link.
  const wss = new WebSocketServer({ host: '127.0.0.1', port });
  await once(wss, 'listening');
  const frames = [];
  wss.on('connection', (ws) => ws.on('message', (d) => frames.push(JSON.parse(String(d)))));
  t.after(() => new Promise((r) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => r());
  }));
  await until(() => frames.some((f) => f.type === 'connect' && f.from === node.did), 'the reconnect once the relay is up', 45_000);
});

// A child process: start a node on a stand-in relay, print "up", and do
// nothing more. Nothing of the test's own keeps it alive: only what the
// node holds (the relay link) does. On SIGUSR2 it stops the node and
// prints "stopped"; the process must then end by itself.
const CHILD = `
import { createNode } from ${JSON.stringify(new URL('../js-host/node-host.js', import.meta.url).href)};
const [stateDir, relayUrl, registryUrl] = process.argv.slice(2);
const node = await createNode({ stateDir, relayUrl, registryUrl, name: 'held', log: () => {} });
process.on('SIGUSR2', async () => { await node.stop(); console.log('stopped'); process.removeAllListeners('SIGUSR2'); });
console.log('up ' + node.did);
`;

test('real core: an open relay link keeps the process up; a stopped node lets it end', { timeout: 60_000 }, async (t) => {
  const dir = tmpDir(t);
  const relay = await standInRelay(t);
  const registry = `http://127.0.0.1:${await closedPort()}`;
  const script = path.join(dir, 'child.mjs');
  fs.writeFileSync(script, CHILD);
  const child = spawn(process.execPath, [script, path.join(dir, 'state'), relay.url, registry], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  t.after(() => { if (!exited) child.kill('SIGKILL'); });
  await until(() => /^up did:/m.test(out) || exited, 'the child node up', 30_000);
  assert.equal(exited, null, `the child ended before it was up: ${err}`);
  await until(() => relay.seen.frames.some((f) => f.type === 'connect'), 'the child\'s relay link', 15_000);
  // Nothing but the relay link holds the process now.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(exited, null, `the process ended with its relay link open: ${err}`);
  child.kill('SIGUSR2');
  await until(() => exited, 'the process to end after its node stopped', 15_000);
  assert.match(out, /^stopped$/m, err);
  assert.deepEqual(exited, { code: 0, signal: null });
});
