// The node behind a forward proxy (js-host/proxy.js), as in NemoClaw's
// OpenShell sandbox where the only way out is an HTTP CONNECT proxy that
// allows some destinations: a real proxy (Debian's tinyproxy, on 127.0.0.1,
// with an allow-list of ports and hosts), the real relay and registry, real
// nodes. Through the proxy: register, send and receive end-to-end encrypted;
// the proxy's log shows the tunnels. A destination it filters out, an
// unreachable proxy, wrong credentials: the tool's text names the proxy and
// what it said, never a password. NO_PROXY bypasses it; without any proxy
// variable the node uses fetch and the WebSocket exactly as before. TLS
// (https, wss) runs inside the tunnel. Loopback only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import https from 'node:https';
import tls from 'node:tls';
import { WebSocketServer } from 'ws';
import { startServers, freePort } from './harness/servers.mjs';
import { untilRegistered } from './harness/registered.mjs';
import { skipTestUnlessCi } from './harness/prereq.mjs';
import { createNode } from '../js-host/node-host.js';
import { proxySettings } from '../js-host/proxy.js';
import { createHttp } from '../js-host/http.js';
import { createSockets, relaySocketClass, webSocketClass, wsPackageClass } from '../js-host/sockets.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (r) => r?.content?.[0]?.text ?? '';
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}
const TINYPROXY = which('tinyproxy');
// Checked in each test that needs it (skipTestUnlessCi): skipped on a developer
// machine without it, a failure under CI.
const NO_TINYPROXY = TINYPROXY
  ? false
  : 'tinyproxy is not installed (Debian package tinyproxy-bin; `bash scripts/setup.sh` installs it): no real proxy to test against';

async function waitFor(fn, what, ms = 20_000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// ---- the settings alone -----------------------------------------------------

test('proxy settings: which variable for which destination, NO_PROXY forms, no credentials in any text', () => {
  assert.equal(proxySettings({}).any, false);
  assert.equal(proxySettings(false).any, false);
  assert.equal(proxySettings(null).any, false);
  assert.equal(proxySettings({ HTTPS_PROXY: '  ' }).any, false);

  const p = proxySettings({ HTTPS_PROXY: 'http://a:3128', HTTP_PROXY: 'http://b:8080', NO_PROXY: 'localhost, .corp.example,10.0.0.0/8 db.example:5432,[::1]' });
  assert.equal(p.for('https://relay.example/ws').label, 'http://a:3128');
  assert.equal(p.for('wss://relay.example/ws').variable, 'HTTPS_PROXY');
  assert.equal(p.for('ws://relay.example:8083/ws').label, 'http://b:8080');
  assert.deepEqual(p.for('http://registry.example/v1').target, { host: 'registry.example', port: 80, secure: false });
  assert.deepEqual(p.for('wss://relay.example/ws').target, { host: 'relay.example', port: 443, secure: true });
  for (const direct of ['http://localhost:8082', 'https://x.corp.example', 'https://corp.example', 'http://10.1.2.3:80', 'http://db.example:5432', 'http://[::1]:8083'])
    assert.equal(p.for(direct), null, direct);
  for (const proxied of ['http://db.example:5433', 'http://11.1.2.3', 'https://notcorp.example', 'http://127.0.0.1:8082'])
    assert.ok(p.for(proxied), proxied);
  assert.equal(proxySettings({ HTTP_PROXY: 'http://b:1', NO_PROXY: '*' }).for('http://x'), null);

  // The lower-case spelling wins (as in curl); ALL_PROXY fills what is not set; https does not fall back to HTTP_PROXY.
  assert.equal(proxySettings({ https_proxy: 'http://low:1', HTTPS_PROXY: 'http://up:2' }).for('https://x').label, 'http://low:1');
  assert.equal(proxySettings({ HTTP_PROXY: 'http://b:1' }).for('https://x'), null);
  const all = proxySettings({ ALL_PROXY: 'http://all:3', HTTP_PROXY: 'http://b:1' });
  assert.equal(all.for('https://x').variable, 'ALL_PROXY');
  assert.equal(all.for('http://x').variable, 'HTTP_PROXY');
  // A SOCKS ALL_PROXY (meant for other tools) is not used, and said once.
  const socks = proxySettings({ ALL_PROXY: 'socks5://127.0.0.1:1080' });
  assert.equal(socks.any, false);
  assert.match(socks.warnings[0], /ALL_PROXY names a socks5 proxy, which kars-mesh does not speak/);
  // "host:port" alone is an http:// proxy; a string is one proxy for everything.
  assert.equal(proxySettings({ HTTPS_PROXY: '10.200.0.1:3128' }).for('https://x').label, 'http://10.200.0.1:3128');
  assert.equal(proxySettings('http://p:9').for('ws://x').label, 'http://p:9');

  // Credentials: only in the CONNECT request's header, never in a label, a description or an error.
  const secret = proxySettings({ HTTPS_PROXY: 'http://kars:s3cret%21@proxy.example:3128', NO_PROXY: 'localhost' });
  const via = secret.for('https://relay.example');
  assert.equal(via.label, 'http://proxy.example:3128');
  assert.equal(via.auth, `Basic ${Buffer.from('kars:s3cret!').toString('base64')}`);
  assert.doesNotMatch(JSON.stringify({ ...via }), /Basic|s3cret/);
  assert.doesNotMatch(secret.describe(), /s3cret|kars:/);
  const bad = proxySettings({ HTTPS_PROXY: 'http://kars:s3cret@[bad' });
  assert.match(bad.for('https://x').invalid, /^proxy setting HTTPS_PROXY is not a usable proxy URL/);
  assert.doesNotMatch(bad.for('https://x').invalid, /s3cret/);
  assert.match(proxySettings({ HTTPS_PROXY: 'socks5://u:pw@h:1' }).for('https://x').invalid, /^proxy setting HTTPS_PROXY names a socks5 proxy; kars-mesh speaks HTTP CONNECT only/);
});

// ---- real parts --------------------------------------------------------------

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

/** tinyproxy on 127.0.0.1: CONNECT only to `connectPorts`, only to `allowHosts`, its log kept. */
async function startTinyproxy(dir, { connectPorts, allowHosts = ['127.0.0.1'], basicAuth } = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const logFile = path.join(dir, 'tinyproxy.log');
  const filterFile = path.join(dir, 'filter');
  const confFile = path.join(dir, 'tinyproxy.conf');
  fs.writeFileSync(filterFile, allowHosts.map((h) => `^${esc(h)}$`).join('\n') + '\n');
  const conf = [
    `Port ${port}`,
    'Listen 127.0.0.1',
    'Timeout 60',
    `LogFile "${logFile}"`,
    'LogLevel Info',
    'MaxClients 50',
    'Allow 127.0.0.1',
    ...connectPorts.map((p) => `ConnectPort ${p}`),
    `Filter "${filterFile}"`,
    'FilterType ere',
    'FilterDefaultDeny Yes',
    'DisableViaHeader Yes',
    ...(basicAuth ? [`BasicAuth ${basicAuth.user} ${basicAuth.password}`] : []),
  ];
  fs.writeFileSync(confFile, conf.join('\n') + '\n');
  const child = spawn(TINYPROXY, ['-d', '-c', confFile], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise((r) => child.on('exit', () => { children.delete(child); r(); }));
  const log = () => {
    try {
      return fs.readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  await waitFor(
    () => new Promise((resolve) => {
      if (child.exitCode !== null) throw new Error(`tinyproxy exited: ${output}\n${log()}`);
      const s = net.connect(port, '127.0.0.1');
      s.on('connect', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    }),
    'tinyproxy to listen',
    10_000,
  );
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    log,
    /** The destinations of the CONNECT requests it received, in order. */
    connects: () => [...log().matchAll(/Request \(file descriptor \d+\): CONNECT (\S+) HTTP/g)].map((m) => m[1]),
    async stop() {
      if (child.exitCode === null) {
        try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
        const t = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 3000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** A self-signed certificate for 127.0.0.1 (openssl), for the TLS-in-the-tunnel test. */
function selfSigned(dir) {
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  const r = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=kars-mesh proxy test', '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr}`);
  return { key: fs.readFileSync(key, 'utf8'), cert: fs.readFileSync(cert, 'utf8') };
}

let work;
let srv;
let tp;
let tlsPort;
const liveNodes = new Set();

before(async () => {
  if (NO_TINYPROXY) return;
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-proxy-'));
  srv = await startServers();
  tlsPort = await freePort();
  tp = await startTinyproxy(path.join(work, 'proxy'), { connectPorts: [srv.relayPort, srv.registryPort, tlsPort] });
});

after(async () => {
  for (const n of liveNodes) await n.stop().catch(() => {});
  await tp?.stop();
  await srv?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** A node on the real relay and registry; its log lines are kept in `logs`. */
async function node(t, name, extra = {}) {
  const stateDir = fs.mkdtempSync(path.join(work, `${name}-`));
  const logs = [];
  const n = await createNode({
    stateDir,
    relayUrl: srv.relayUrl,
    registryUrl: srv.registryUrl,
    name,
    log: (level, message) => logs.push(`${level}: ${message}`),
    ...extra,
  });
  n.logs = logs;
  liveNodes.add(n);
  // Each test stops its nodes: a node left running would keep using the proxy.
  t.after(async () => {
    liveNodes.delete(n);
    await n.stop().catch(() => {});
  });
  return n;
}

async function exchange(from, to, message) {
  const sent = await from.callTool('mesh_send', { to: to.did, message }, { timeoutMs: 30_000 });
  assert.match(text(sent), /^✓ Message sent to /, text(sent));
  const got = await to.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 20, mark_read: true }, { timeoutMs: 30_000 });
  const m = got.details.mesh.messages.find((x) => JSON.stringify(x.payload).includes(message));
  assert.ok(m, `${message} not in ${text(got)}`);
  assert.equal(m.from, from.did);
  assert.equal(m.evidence, 'encrypted');
}

test('through the proxy: register, send and receive end-to-end encrypted; the proxy logs the tunnels', { timeout: 90_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const before = tp.connects().length;
  const alice = await node(t, 'alice', { proxy: { HTTPS_PROXY: tp.url, HTTP_PROXY: tp.url } });
  const bob = await node(t, 'bob', { proxy: false });
  await untilRegistered(alice, 'alice (through the proxy)', 200);
  await untilRegistered(bob, 'bob', 200);
  await exchange(alice, bob, 'hello through the proxy');
  await exchange(bob, alice, 'and back to the proxied node');
  assert.match(text(await alice.callTool('mesh_identity', {})), /Registered: yes\nRelay: connected/);

  const tunnels = tp.connects().slice(before);
  assert.ok(tunnels.includes(`127.0.0.1:${srv.relayPort}`), `no CONNECT to the relay in ${tunnels}`);
  assert.ok(tunnels.includes(`127.0.0.1:${srv.registryPort}`), `no CONNECT to the registry in ${tunnels}`);
  assert.ok(alice.logs.some((l) => l === `info: host: relay and registry connections: https/wss through ${tp.url} (HTTPS_PROXY), http/ws through ${tp.url} (HTTP_PROXY)`), alice.logs.join('\n'));
});

test('a destination the proxy refuses: the tool text names the proxy, the destination and the policy preset', { timeout: 90_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const proxy = { HTTP_PROXY: tp.url };
  const label = esc(tp.url);

  // The registry on a port the proxy does not CONNECT to.
  const closedPort = await freePort();
  const carol = await node(t, 'carol', { registryUrl: `http://127.0.0.1:${closedPort}`, proxy });
  const refusedRegistry = new RegExp(
    `registry unreachable at http://127\\.0\\.0\\.1:${closedPort}: proxy ${label} \\(HTTP_PROXY\\) refused the destination 127\\.0\\.0\\.1:${closedPort} ` +
      `\\(CONNECT answered 403 Access violation\\): its policy does not allow this host and port; under NemoClaw/OpenShell the sandbox's network policy preset must allow 127\\.0\\.0\\.1:${closedPort}`,
  );
  const disc = await carol.callTool('discover', { capability: 'kars-mesh' }, { timeoutMs: 30_000 });
  assert.match(text(disc), /^❌ Discovery failed: /);
  assert.match(text(disc), refusedRegistry);
  const reg = await carol.callTool('mesh_register', {}, { timeoutMs: 30_000 });
  assert.match(text(reg), /^❌ Registration failed: /);
  assert.match(text(reg), refusedRegistry);
  assert.ok(tp.log().includes(`Refused CONNECT method on port ${closedPort}`));

  // The relay under a host name the proxy's filter does not allow.
  const bob = await node(t, 'bob2', { proxy: false });
  await untilRegistered(bob, 'bob2', 200);
  const dave = await node(t, 'dave', { relayUrl: `http://localhost:${srv.relayPort}`, proxy });
  const refusedRelay = new RegExp(`proxy ${label} \\(HTTP_PROXY\\) refused the destination localhost:${srv.relayPort} \\(CONNECT answered 403 Filtered\\): .*preset must allow localhost:${srv.relayPort}`);
  const id = await waitFor(async () => {
    const r = text(await dave.callTool('mesh_identity', {}));
    return refusedRelay.test(r) && r;
  }, 'the relay refusal in mesh_identity');
  assert.match(id, new RegExp(`\\nRelay: ${refusedRelay.source}`));
  const sent = await dave.callTool('mesh_send', { to: bob.did, message: 'held back by the proxy' }, { timeoutMs: 30_000 });
  assert.match(text(sent), /^✓ Message queued for .*: the relay is not reachable \(proxy /);
  assert.match(text(sent), refusedRelay);
  assert.ok(tp.log().includes('Proxying refused on filtered domain "localhost"'));
});

test('an unreachable proxy is named without the credentials in its URL; they reach no text and no log', { timeout: 60_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const dead = await freePort();
  const url = `http://kars:s3cret-pw@127.0.0.1:${dead}`;
  const erin = await node(t, 'erin', { proxy: { HTTPS_PROXY: url, HTTP_PROXY: url } });
  const unreachable = new RegExp(`proxy http://127\\.0\\.0\\.1:${dead} \\(HTTP_PROXY\\) is unreachable: .*ECONNREFUSED`);
  const disc = await erin.callTool('discover', { capability: 'kars-mesh' }, { timeoutMs: 30_000 });
  assert.match(text(disc), /^❌ Discovery failed: registry unreachable at /);
  assert.match(text(disc), unreachable);
  const id = await waitFor(async () => {
    const r = await erin.callTool('mesh_identity', {});
    return unreachable.test(text(r)) && r;
  }, 'the unreachable proxy in mesh_identity');
  const everything = JSON.stringify([disc, id, erin.logs]);
  assert.doesNotMatch(everything, /s3cret/);
  assert.ok(erin.logs.some((l) => l.includes(`through http://127.0.0.1:${dead} (HTTPS_PROXY)`)), erin.logs.join('\n'));
});

test('a proxy that wants credentials: the right ones pass; missing or wrong ones are named as such, never shown', { timeout: 90_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const authed = await startTinyproxy(path.join(work, 'proxy-auth'), {
    connectPorts: [srv.relayPort, srv.registryPort],
    basicAuth: { user: 'kars', password: 'right-pw' },
  });
  t.after(() => authed.stop());
  const withCreds = (pw) => `http://kars:${pw}@127.0.0.1:${authed.port}`;

  const ok = await node(t, 'frank', { proxy: { HTTP_PROXY: withCreds('right-pw') } });
  await untilRegistered(ok, 'frank (with credentials)', 200);
  assert.ok(authed.connects().includes(`127.0.0.1:${srv.registryPort}`));

  const wrong = await node(t, 'grace', { proxy: { HTTP_PROXY: withCreds('wrong-pw') } });
  const refused = text(await wrong.callTool('discover', { capability: 'kars-mesh' }, { timeoutMs: 30_000 }));
  assert.match(refused, new RegExp(`proxy http://127\\.0\\.0\\.1:${authed.port} \\(HTTP_PROXY\\) refused the credentials in its URL for CONNECT to 127\\.0\\.0\\.1:${srv.registryPort} \\(40[17] `));
  const none = await node(t, 'heidi', { proxy: { HTTP_PROXY: `http://127.0.0.1:${authed.port}` } });
  const wanted = text(await none.callTool('discover', { capability: 'kars-mesh' }, { timeoutMs: 30_000 }));
  assert.match(wanted, /wants credentials for CONNECT to .*: put them in the proxy URL \(http:\/\/user:password@host:port\)/);
  assert.doesNotMatch(JSON.stringify([refused, wanted, ok.logs, wrong.logs, none.logs]), /right-pw|wrong-pw/);
});

test('NO_PROXY=127.0.0.1 bypasses the proxy', { timeout: 90_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const before = tp.connects().length;
  const ivan = await node(t, 'ivan', { proxy: { HTTPS_PROXY: tp.url, HTTP_PROXY: tp.url, NO_PROXY: '127.0.0.1' } });
  const judy = await node(t, 'judy', { proxy: false });
  await untilRegistered(ivan, 'ivan', 200);
  await untilRegistered(judy, 'judy', 200);
  await exchange(ivan, judy, 'straight past the proxy');
  assert.deepEqual(tp.connects().slice(before), []);
});

test('no proxy variable: fetch as before, the relay link a direct `ws` socket, the proxy untouched', { timeout: 90_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  const realFetch = globalThis.fetch;
  const RealWebSocket = globalThis.WebSocket;
  const fetches = [];
  const sockets = [];
  globalThis.fetch = (url, init) => {
    fetches.push({ url: String(url), keys: Object.keys(init ?? {}).sort(), redirect: init?.redirect });
    return realFetch(url, init);
  };
  class CountingWebSocket extends RealWebSocket {
    constructor(...args) {
      sockets.push(args);
      super(...args);
    }
  }
  globalThis.WebSocket = CountingWebSocket;
  t.after(() => {
    globalThis.fetch = realFetch;
    globalThis.WebSocket = RealWebSocket;
  });
  assert.equal(await webSocketClass(), CountingWebSocket);

  const before = tp.connects().length;
  const kim = await node(t, 'kim', { proxy: {} });
  const lee = await node(t, 'lee', { proxy: {} });
  await untilRegistered(kim, 'kim', 200);
  await untilRegistered(lee, 'lee', 200);
  await exchange(kim, lee, 'no proxy at all');
  assert.deepEqual(tp.connects().slice(before), []);
  const registry = fetches.filter((f) => f.url.startsWith(srv.registryUrl));
  assert.ok(registry.length >= 4, `registry requests through fetch: ${registry.length}`);
  for (const f of registry) {
    assert.equal(f.redirect, 'manual');
    assert.ok(['headers,method,redirect,signal', 'body,headers,method,redirect,signal'].includes(f.keys.join()), f.keys.join());
  }
  // The relay link is the `ws` package's socket (relaySocketClass: no
  // permessage-deflate), not Node's global WebSocket, and it went direct:
  // the exchange above crossed it, and the proxy saw no CONNECT.
  assert.equal(await relaySocketClass(), await wsPackageClass());
  assert.deepEqual(sockets, []);
  for (const n of [kim, lee]) assert.ok(!n.logs.some((l) => /proxy/i.test(l)), n.logs.join('\n'));
});

test('TLS inside the tunnel: https and wss to the destination end to end, an untrusted certificate named', { timeout: 60_000 }, async (t) => {
  if (skipTestUnlessCi(t, NO_TINYPROXY)) return;
  if (skipTestUnlessCi(t, !which('openssl') && 'openssl is not installed (Debian package openssl): cannot make a certificate for the TLS server')) return;
  if (skipTestUnlessCi(t, typeof tls.setDefaultCACertificates !== 'function'
    && `Node ${process.version} has no tls.setDefaultCACertificates (Node 22.15 or newer): cannot trust the test certificate in-process; run the tests with bash scripts/node.sh, which uses the Node 24 scripts/setup.sh installs`)) return;
  const { key, cert } = selfSigned(work);
  const server = https.createServer({ key, cert }, (req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, type: req.headers['content-type'], body }));
    });
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo:${m}`)));
  await new Promise((r) => server.listen(tlsPort, '127.0.0.1', r));
  t.after(() => { wss.close(); server.close(); server.closeAllConnections?.(); });

  const proxy = proxySettings({ HTTPS_PROXY: tp.url });
  const events = [];
  const dispatch = (ev) => events.push(ev);
  const next = (pred) => waitFor(() => events.find(pred), 'a host event', 20_000);
  const http = createHttp({ dispatch, onFailure: () => {}, proxy });
  const url = `https://127.0.0.1:${tlsPort}/v1/agents?x=1`;
  const request = (id) => http.request({ id, method: 'POST', url, headers: [['content-type', 'application/json']], body: new TextEncoder().encode('{"a":1}'), timeoutMs: 10_000 });

  // Not trusted: the TLS failure names the proxy it went through, and what to do.
  request(1);
  const failed = await next((e) => e.val?.id === 1);
  assert.equal(failed.tag, 'http-failed');
  assert.match(failed.val.message, new RegExp(`^proxy ${esc(tp.url)} \\(HTTPS_PROXY\\): TLS with 127\\.0\\.0\\.1:${tlsPort} through the tunnel failed: .*self-signed.*NODE_EXTRA_CA_CERTS`));

  const previous = tls.getCACertificates('default');
  tls.setDefaultCACertificates([...previous, cert]);
  t.after(() => tls.setDefaultCACertificates(previous));
  request(2);
  const answered = await next((e) => e.val?.id === 2);
  assert.equal(answered.tag, 'http-response', JSON.stringify(answered));
  assert.equal(answered.val.status, 200);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(answered.val.body)), {
    method: 'POST', url: '/v1/agents?x=1', host: `127.0.0.1:${tlsPort}`, type: 'application/json', body: '{"a":1}',
  });

  const sockets = createSockets({ WebSocketImpl: await webSocketClass(), ProxyWebSocketImpl: await wsPackageClass(), dispatch, log: () => {}, onFailure: () => {}, proxy });
  sockets.open(7, `wss://127.0.0.1:${tlsPort}/ws`);
  await next((e) => e.tag === 'socket-opened' && e.val === 7);
  sockets.send(7, 'ping');
  const frame = await next((e) => e.tag === 'socket-frame' && e.val.socket === 7);
  assert.equal(frame.val.text, 'echo:ping');
  sockets.close(7, 1000, 'bye');
  await next((e) => e.tag === 'socket-closed' && e.val.socket === 7);
  assert.equal(tp.connects().filter((c) => c === `127.0.0.1:${tlsPort}`).length, 3);
});
