// A NemoClaw-like sandbox from real pieces on this machine (openclaw-host.md
// §13): the REAL OpenClaw Gateway (openclaw 2026.9.6, Node 24) with kars-mesh
// installed from the packed tarball by `openclaw plugins install`, running as
// a non-root user (65534, no capabilities) in its own network namespace,
// where the only address it can reach is a REAL forward proxy (Debian's
// tinyproxy) that allows exactly the endpoints of the preset `kars-mesh
// preset` made for the cluster; and in its own mount namespace, where HOME and
// every world-writable directory are read-only and only the OpenClaw state
// directory and a private /tmp are writable. Outside, on 127.0.0.1: a local
// kars cluster (the REAL relay and registry, a controller node that starts
// sandbox peers) and a peer node without any proxy.
//
// Through the Gateway's POST /tools/invoke: pair with the cluster's token,
// send and receive end-to-end encrypted messages, discover, offload with a
// file to done. Then the same Gateway pointed at a relay and registry the
// preset does not name: the proxy's refusal in the tool's text. The preset's
// endpoints are the tunnels the proxy opened; its methods and paths are
// exactly the requests the engine sent to the registry in this run (the
// registry's access log), the relay's rules its WebSocket path and the
// engine's text frames (wit: socket-send carries text only).
//
// Every address is one this test creates (10.200.N.0/30 on a veth pair
// between this machine and the test's namespace) or loopback; the namespace
// has no route anywhere else, so nothing leaves the machine (OpenClaw's own
// telemetry goes to the proxy, which refuses it). Everything is torn down in
// `after`, also on failure. Needs root (ip netns, mount namespaces); where
// that or network namespaces are unavailable, the test says why and skips,
// except under CI (CI=true), where that is a failure (tests/harness/prereq.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { PRESET_NAME } from '../js-host/preset.js';
import { NODE24, OPENCLAW, postToolsInvoke } from './harness/openclaw.mjs';
import { freePort, startServers } from './harness/servers.mjs';
import { runCli } from './harness/cluster.mjs';
import { untilRegistered } from './harness/registered.mjs';
import { followOffload } from './harness/follow.mjs';
import { globMatches, parsePreset, presetProblems } from './harness/nemoclaw-preset.mjs';
import { skipTestUnlessCi } from './harness/prereq.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SANDBOX_UID = 65534; // nobody, as NemoClaw's non-root `sandbox` user
const GATEWAY_PORT = 18789; // inside the namespace: its own port space
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sha = (b) => createHash('sha256').update(b).digest('hex');
const t0 = Date.now();

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}
function sh(cmd, args, { allowFail = false, timeout = 30_000 } = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout });
  if (!allowFail && r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error?.message ?? ''}${r.stderr}`);
  return r;
}

/** Why this machine cannot run the sandbox (null when it can). */
function cannotRun() {
  if (process.getuid?.() !== 0) return 'needs root (ip netns, veth, mount namespaces): run the tests as root, as CI does';
  // Each tool's Debian package, so the reason says how to install it.
  const packages = {
    ip: 'iproute2; scripts/setup.sh installs it',
    unshare: 'util-linux',
    setpriv: 'util-linux',
    mount: 'mount',
    tinyproxy: 'tinyproxy-bin; scripts/setup.sh installs it',
  };
  for (const [tool, pkg] of Object.entries(packages)) {
    if (!which(tool)) return `${tool} is not installed (Debian package ${pkg})`;
  }
  if (!fs.existsSync(NODE24) || !fs.existsSync(OPENCLAW)) return `Node 24 or openclaw missing: run bash scripts/setup-openclaw.sh`;
  if (!fs.existsSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.js'))) return 'js-host/gen/ missing: run bash scripts/build.sh';
  return null;
}

let skipReason = cannotRun();
const S = {}; // everything the test set up, for `after`
const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

/** A child in its own process group, its output kept (bounded). */
function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.add(child);
  let out = '';
  const keep = (d) => {
    out += d;
    if (out.length > 512 * 1024) out = out.slice(-512 * 1024);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((r) => child.on('exit', (code, signal) => {
    children.delete(child);
    keep(`\n[exited code=${code} signal=${signal}]\n`);
    r({ code, signal });
  }));
  return {
    child,
    exited,
    output: () => out,
    running: () => child.exitCode === null && child.signalCode === null,
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) {
        try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
        const t = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
        await exited;
        clearTimeout(t);
      }
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* group gone */ }
    },
  };
}

async function waitFor(fn, what, ms = 30_000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    last = await fn();
    if (last) return last;
    await sleep(200);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** A /30 in 10.200.0.0/16 no interface on this machine uses. */
function freeSubnet() {
  const used = sh('ip', ['-4', '-o', 'addr']).stdout;
  for (let i = 0; i < 64; i++) {
    const n = randomBytes(1)[0];
    if (!used.includes(`10.200.${n}.`)) return `10.200.${n}`;
  }
  throw new Error('no free 10.200.N.0/30');
}

/** The world-writable directories the sandbox user could otherwise write to. */
const WORLD_WRITABLE = ['/tmp', '/var/tmp', '/run/lock', '/dev/shm', '/dev/mqueue'].filter((d) => {
  try {
    return fs.statSync(d).isDirectory();
  } catch {
    return false;
  }
});

/** Every file under dir with its size and mtime (the "nothing written here" check). */
function snapshot(dir) {
  const out = {};
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out[path.relative(dir, p)] = `${st.mode.toString(8)} ${st.size} ${st.mtimeMs}`;
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/** tinyproxy on the host side of the veth: CONNECT only to the preset's host:port pairs. */
async function startProxy(dir, listen, client, endpoints) {
  const port = await freePort();
  const hosts = [...new Set(endpoints.map((e) => e.host))];
  const ports = [...new Set(endpoints.map((e) => e.port))];
  // tinyproxy filters hosts and CONNECT ports separately: exact only when every
  // allowed host:port pair is one of the preset's (here: one host).
  assert.equal(hosts.length * ports.length, endpoints.length, 'the proxy filter would allow more than the preset');
  const logFile = path.join(dir, 'tinyproxy.log');
  const filter = path.join(dir, 'tinyproxy.filter');
  fs.writeFileSync(filter, hosts.map((h) => `^${h.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`).join('\n') + '\n');
  const conf = path.join(dir, 'tinyproxy.conf');
  fs.writeFileSync(conf, [
    `Port ${port}`,
    `Listen ${listen}`,
    'Timeout 120',
    `LogFile "${logFile}"`,
    'LogLevel Info',
    'MaxClients 50',
    `Allow ${client}`,
    ...ports.map((p) => `ConnectPort ${p}`),
    `Filter "${filter}"`,
    'FilterType ere',
    'FilterDefaultDeny Yes',
    'DisableViaHeader Yes',
  ].join('\n') + '\n');
  const p = start(which('tinyproxy'), ['-d', '-c', conf]);
  const log = () => {
    try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; }
  };
  await waitFor(() => /listening on|Accepting connections/i.test(log()) || !p.running(), 'tinyproxy to listen', 10_000);
  if (!p.running()) throw new Error(`tinyproxy exited: ${p.output()}\n${log()}`);
  return {
    ...p,
    url: `http://${listen}:${port}`,
    log,
    connects: () => [...log().matchAll(/Request \(file descriptor \d+\): CONNECT (\S+) HTTP/g)].map((m) => m[1]),
    /**
     * The CONNECT targets it opened (its `opensock` line names host:port) and
     * the ones it refused (asked for, never opened; each with its refusal line).
     */
    outcomes() {
      const text = log();
      const asked = new Set([...text.matchAll(/Request \(file descriptor \d+\): CONNECT (\S+) HTTP/g)].map((m) => m[1]));
      const opened = new Set([...text.matchAll(/opensock: opening connection to (\S+)/g)].map((m) => m[1]));
      const refused = [...asked].filter((x) => !opened.has(x));
      for (const r of refused) {
        const [, host, port] = /^(.*):(\d+)$/.exec(r);
        assert.ok(text.includes(`Proxying refused on filtered domain "${host}"`) || text.includes(`Refused CONNECT method on port ${port}`), `no refusal logged for ${r}`);
      }
      return { opened: [...opened], refused };
    },
    established: () => [...log().matchAll(/Established connection to host "([^"]+)"/g)].map((m) => m[1]),
  };
}

before(async () => {
  if (skipReason) return;
  // ---- the network namespace: a veth pair, a /30, no route anywhere else ----
  const tag = randomBytes(3).toString('hex');
  S.ns = `kars-nemo-${tag}`;
  S.vethHost = `knh${tag}`;
  S.vethNs = `kns${tag}`;
  const made = sh('ip', ['netns', 'add', S.ns], { allowFail: true });
  if (made.status !== 0) {
    skipReason = `cannot create network namespaces (needs root with CAP_SYS_ADMIN, e.g. a container started with --privileged): ip netns add: ${(made.stderr || made.error?.message || '').trim()}`;
    S.ns = undefined;
    return;
  }
  const net = freeSubnet();
  S.hostIp = `${net}.1`;
  S.nsIp = `${net}.2`;
  sh('ip', ['link', 'add', S.vethHost, 'type', 'veth', 'peer', 'name', S.vethNs]);
  sh('ip', ['link', 'set', S.vethNs, 'netns', S.ns]);
  sh('ip', ['addr', 'add', `${S.hostIp}/30`, 'dev', S.vethHost]);
  sh('ip', ['link', 'set', S.vethHost, 'up']);
  sh('ip', ['netns', 'exec', S.ns, 'ip', 'addr', 'add', `${S.nsIp}/30`, 'dev', S.vethNs]);
  sh('ip', ['netns', 'exec', S.ns, 'ip', 'link', 'set', S.vethNs, 'up']);
  sh('ip', ['netns', 'exec', S.ns, 'ip', 'link', 'set', 'lo', 'up']);

  // ---- directories: base is traversable; state and tmp belong to the sandbox user ----
  // In /var/tmp: the sandbox gets a /tmp of its own (S.tmp mounted there).
  S.base = fs.mkdtempSync('/var/tmp/kars-nemo-');
  fs.chmodSync(S.base, 0o755);
  for (const d of ['home', 'operator-home', 'state', 'tmp', 'pkg', 'peer', 'proxy', 'npm-cache']) fs.mkdirSync(path.join(S.base, d), { mode: 0o755 });
  S.home = path.join(S.base, 'home'); // the sandbox's HOME, read-only to it
  fs.mkdirSync(path.join(S.home, '.config'));
  fs.writeFileSync(path.join(S.home, '.profile'), '# the sandbox user\'s read-only HOME\n');
  S.state = path.join(S.base, 'state');
  S.tmp = path.join(S.base, 'tmp');
  S.meshState = path.join(S.state, 'kars-mesh');

  // ---- outside: the local kars cluster: the real relay and registry on
  // 127.0.0.1 (their access logs kept) and a controller node that starts
  // sandbox peers (the built-in executor), as `kars-mesh cluster up` runs it ----
  S.srv = await startServers();
  S.relayUrl = S.srv.relayUrl;
  S.registryUrl = S.srv.registryUrl;
  S.relayPort = Number(new URL(S.relayUrl).port);
  S.registryPort = Number(new URL(S.registryUrl).port);
  S.sandboxes = path.join(S.base, 'sandboxes');
  S.ctrl = await createNode({
    stateDir: path.join(S.base, 'controller'), relayUrl: S.relayUrl, registryUrl: S.registryUrl, name: 'controller',
    role: 'controller', clusterName: 'nemo-lab', sandboxes: { dir: S.sandboxes }, proxy: false, log: () => {},
  });
  await untilRegistered(S.ctrl, 'controller');

  // ---- the preset for this cluster, made by the CLI as a user would ----
  S.presetFile = path.join(S.base, `${PRESET_NAME}.yaml`);
  const pr = await runCli(['preset', '--relay', S.relayUrl, '--registry', S.registryUrl, '--out', S.presetFile], { home: S.base });
  assert.equal(pr.code, 0, pr.stderr);
  assert.match(pr.stderr, /warning: relay host 127\.0\.0\.1 is this machine's loopback/); // said, since NemoClaw would not take it as is
  S.presetText = fs.readFileSync(S.presetFile, 'utf8');
  assert.deepEqual(presetProblems(S.presetText, path.basename(S.presetFile)), []);
  S.preset = parsePreset(S.presetText).network_policies.kars_mesh;

  // ---- the proxy: the sandbox's only way out ----
  S.proxy = await startProxy(path.join(S.base, 'proxy'), S.hostIp, S.nsIp, S.preset.endpoints);

  // ---- a peer outside, without any proxy (behaviour unchanged) ----
  S.peer = await createNode({ stateDir: path.join(S.base, 'peer'), relayUrl: S.relayUrl, registryUrl: S.registryUrl, name: 'outside-peer', proxy: false, log: () => {} });
  await untilRegistered(S.peer, 'outside-peer');

  // ---- the Gateway's home: the packed tarball, installed by OpenClaw itself ----
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', path.join(S.base, 'pkg')], {
    cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' },
  }));
  S.tgz = path.join(S.base, 'pkg', packed[0].filename);
  const shipped = packed[0].files.map((f) => f.path);
  for (const f of ['nemoclaw/kars-mesh.yaml', 'js-host/plugin.js', 'js-host/gen/kars_mesh.component.js', 'js-host/gen/kars_mesh.component.core.wasm', 'openclaw.plugin.json']) {
    assert.ok(shipped.includes(f), `the tarball lacks ${f}`);
  }
  S.ocEnv = {
    PATH: `${path.dirname(NODE24)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: S.home,
    OPENCLAW_STATE_DIR: S.state,
    OPENCLAW_DISABLE_BONJOUR: '1',
    NO_COLOR: '1',
    FORCE_COLOR: '0',
    LANG: 'C.UTF-8',
  };
  // Installing is the image build, outside the sandbox: it fetches the
  // plugin's one dependency (ws) from the npm registry with this machine's
  // network settings (NODE_EXTRA_CA_CERTS where a TLS-inspecting egress needs
  // it; without, npm retries for many minutes).
  const installEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(OPENCLAW_|KARS_MESH_|npm_)/.test(k)));
  const oc = (args, timeout = 180_000) => spawnSync(NODE24, [OPENCLAW, ...args], {
    cwd: S.base, encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'pipe'],
    // the operator's own HOME: the sandbox's is touched by nobody
    env: { ...installEnv, ...S.ocEnv, HOME: path.join(S.base, 'operator-home'), TMPDIR: path.join(S.base, 'operator-home'), npm_config_cache: path.join(S.base, 'npm-cache'), npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' },
  });
  const inst = oc(['plugins', 'install', S.tgz, '--force', '--accept-capabilities']);
  assert.equal(inst.status, 0, `openclaw plugins install: ${inst.error?.message ?? ''}\n${inst.stdout}\n${inst.stderr}`);
  assert.match(inst.stdout + inst.stderr, /Installed plugin: kars-mesh/);
  const mode = oc(['config', 'set', 'gateway.mode', 'local'], 120_000);
  assert.equal(mode.status, 0, `${mode.stdout}\n${mode.stderr}`);
  S.configFile = path.join(S.state, 'openclaw.json');
  // The plugin's endpoints; its state goes to its default place,
  // OPENCLAW_STATE_DIR/kars-mesh (S.meshState), not the read-only HOME.
  // (with `openclaw config set`, which checks it against the plugin's config schema)
  S.setPluginConfig = (relayUrl, registryUrl) => {
    const config = {
      relay_url: relayUrl,
      registry_url: registryUrl,
      display_name: 'sandboxed-claw',
      timeouts: { start_seconds: 60, tool_seconds: 120 },
    };
    const set = oc(['config', 'set', 'plugins.entries.kars-mesh.config', JSON.stringify(config), '--strict-json'], 120_000);
    assert.equal(set.status, 0, `openclaw config set: ${set.stdout}\n${set.stderr}`);
    assert.deepEqual(JSON.parse(fs.readFileSync(S.configFile, 'utf8')).plugins.entries['kars-mesh'].config, config);
    execFileSync('chown', ['-R', `${SANDBOX_UID}:${SANDBOX_UID}`, S.state]);
  };
  S.setPluginConfig(S.relayUrl, S.registryUrl);
  execFileSync('chown', ['-R', `${SANDBOX_UID}:${SANDBOX_UID}`, S.state]);
  fs.chmodSync(S.state, 0o700);
  fs.chmodSync(S.tmp, 0o1777); // the sandbox's /tmp, as any /tmp (OpenClaw checks it is sticky)
  S.homeBefore = snapshot(S.home);
  S.marker = Date.now();
});

/**
 * The Gateway as NemoClaw runs it: in the namespace, as uid 65534 with no
 * capabilities, HOME and every world-writable directory read-only, only the
 * state and tmp directories writable, HTTP(S)_PROXY naming the proxy.
 */
async function startGateway() {
  const token = randomBytes(18).toString('hex');
  const ro = [...WORLD_WRITABLE.filter((d) => d !== '/tmp'), S.home];
  // Node 24 and OpenClaw live in this checkout's .cache/, which a clone under
  // /tmp (as CI may make it) would lose under the private /tmp: they are
  // bound, read-only, under base first and run from there.
  const runtime = path.join(S.base, 'runtime');
  const cacheDir = path.join(ROOT, '.cache');
  const inRuntime = (p) => path.join(runtime, path.relative(cacheDir, p));
  fs.mkdirSync(runtime, { recursive: true, mode: 0o755 });
  const script = [
    'set -e',
    // read-only: every world-writable directory but /tmp (base lies in /var/tmp), and HOME
    ...ro.map((d) => `if [ -d '${d}' ]; then mount --bind '${d}' '${d}'; mount -o remount,bind,ro '${d}'; fi`),
    // after those (a bind of /var/tmp onto itself would hide it), before the private /tmp
    `mount --bind '${cacheDir}' '${runtime}'`,
    `mount -o remount,bind,ro '${runtime}'`,
    // writable: a private /tmp (as NemoClaw's) and the state directory
    // (a bind mount keeps the read-only flag of where its source lies: made rw again)
    `mount --bind '${S.tmp}' /tmp`,
    'mount -o remount,bind,rw /tmp',
    `mount --bind '${S.state}' '${S.state}'`,
    `mount -o remount,bind,rw '${S.state}'`,
    `exec setpriv --reuid ${SANDBOX_UID} --regid ${SANDBOX_UID} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"`,
  ].join('\n');
  const env = {
    ...S.ocEnv,
    TMPDIR: '/tmp',
    // OpenClaw stages SQLite snapshots in $XDG_CACHE_HOME (default ~/.cache,
    // read-only here): a writable one, as a read-only HOME needs.
    XDG_CACHE_HOME: '/tmp/.cache',
    HTTP_PROXY: S.proxy.url,
    HTTPS_PROXY: S.proxy.url,
    OPENCLAW_GATEWAY_TOKEN: token,
  };
  const gw = start('ip', ['netns', 'exec', S.ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sandbox',
    inRuntime(NODE24), inRuntime(OPENCLAW), 'gateway', 'run', '--port', String(GATEWAY_PORT), '--bind', 'lan', '--auth', 'token'], { cwd: '/', env: { ...env, PATH: `${path.dirname(inRuntime(NODE24))}:${env.PATH.split(':').slice(1).join(':')}` } });
  const url = `http://${S.nsIp}:${GATEWAY_PORT}`;
  const post = (body, ms = 60_000) => postToolsInvoke(url, token, body, ms);
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (!gw.running()) throw new Error(`the Gateway exited during startup:\n${gw.output().slice(-6000)}`);
    try {
      const r = await post({ tool: 'kars_mesh_no_such_tool', args: {} }, 2000);
      if (r.status === 404 || r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await gw.stop();
      throw new Error(`the Gateway is not answering on ${url}:\n${gw.output().slice(-6000)}`);
    }
    await sleep(300);
  }
  const invoke = async (tool, args = {}, ms = 60_000) => {
    const r = await post({ tool, args }, ms);
    assert.equal(r.status, 200, `${tool}: HTTP ${r.status} ${r.text.slice(0, 1000)}\n${gw.output().slice(-3000)}`);
    assert.equal(r.json?.ok, true, r.text.slice(0, 1000));
    return r.json.result;
  };
  /** A call that fails as OpenClaw's tool contract has it: HTTP 400, ok:false, the ❌ text as the message. */
  const invokeFailing = async (tool, args = {}, ms = 60_000) => {
    const r = await post({ tool, args }, ms);
    assert.equal(r.status, 400, `${tool}: expected a failed call, got HTTP ${r.status} ${r.text.slice(0, 1000)}`);
    assert.equal(r.json?.ok, false, r.text.slice(0, 1000));
    assert.equal(r.json.error?.type, 'tool_error', r.text.slice(0, 1000));
    return r.json.error.message;
  };
  return { ...gw, url, invoke, invokeFailing };
}

const text = (r) => r.content[0].text;

after(async () => {
  const steps = [
    async () => S.gw?.stop(15_000),
    async () => S.peer?.stop(),
    async () => S.ctrl?.stop(),
    async () => S.sandboxes && killSandboxes(S.sandboxes, { graceMs: 2000 }),
    async () => S.srv?.stop(),
    async () => S.proxy?.stop(5000),
    async () => {
      if (S.ns) sh('ip', ['netns', 'del', S.ns], { allowFail: true });
      if (S.vethHost) sh('ip', ['link', 'del', S.vethHost], { allowFail: true }); // gone with the namespace, normally
    },
    async () => S.base && fs.rmSync(S.base, { recursive: true, force: true }),
  ];
  for (const step of steps) {
    try {
      await step();
    } catch (e) {
      console.error(`teardown: ${e.message}`);
    }
  }
  // Nothing of ours is left: no namespace, no veth.
  if (S.ns) {
    assert.ok(!sh('ip', ['netns', 'list']).stdout.includes(S.ns), `namespace ${S.ns} still there`);
    assert.ok(!sh('ip', ['-o', 'link']).stdout.includes(S.vethHost), `veth ${S.vethHost} still there`);
  }
  console.log(`# nemoclaw sandbox test: ${((Date.now() - t0) / 1000).toFixed(1)} s in all`);
});

test('a NemoClaw-like sandbox: pair, encrypted messages both ways, discover, an offload with a file; only the preset\'s endpoints; HOME untouched', { timeout: 600_000 }, async (t) => {
  if (skipTestUnlessCi(t, skipReason)) return;
  // ---- from inside the namespace, the proxy is the only reachable address ----
  const probe = `const net=require('net');const out={};let n=0;const T=${JSON.stringify([
    [S.hostIp, Number(new URL(S.proxy.url).port)],
    [S.hostIp, S.relayPort],
    ['127.0.0.1', S.relayPort],
    ['127.0.0.1', S.registryPort],
    ['192.0.2.1', 80],
  ])};for(const [h,p] of T){const s=net.connect({host:h,port:p,timeout:3000});const k=h+':'+p;const done=(v)=>{if(out[k])return;out[k]=v;s.destroy();if(++n===T.length)console.log(JSON.stringify(out));};s.on('connect',()=>done('open'));s.on('error',(e)=>done(e.code));s.on('timeout',()=>done('timeout'));}`;
  const reach = JSON.parse(sh('ip', ['netns', 'exec', S.ns, NODE24, '-e', probe]).stdout);
  assert.deepEqual(reach, {
    [`${S.hostIp}:${new URL(S.proxy.url).port}`]: 'open',
    [`${S.hostIp}:${S.relayPort}`]: 'ECONNREFUSED', // the relay listens on the host's loopback only
    [`127.0.0.1:${S.relayPort}`]: 'ECONNREFUSED', // the namespace's own loopback
    [`127.0.0.1:${S.registryPort}`]: 'ECONNREFUSED',
    '192.0.2.1:80': 'ENETUNREACH', // no route out: nothing leaves the machine
  });

  const tStart = Date.now();
  const gw = (S.gw = await startGateway());
  const started = await waitFor(() => /kars-mesh: mesh node started \((did:mesh:[0-9a-f]{32})\)/.exec(gw.output()), 'the kars-mesh service to start the node', 60_000);
  const clawDid = started[1];
  t.diagnostic(`Gateway up in the sandbox in ${Date.now() - tStart} ms`);
  // It runs as the sandbox user, in the namespace.
  const pid = Number(sh('ip', ['netns', 'pids', S.ns]).stdout.trim().split('\n').find((p) => /openclaw|gateway/.test(fs.readFileSync(`/proc/${p}/cmdline`, 'utf8'))));
  assert.match(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), new RegExp(`\\nUid:\\s+${SANDBOX_UID}\\s+${SANDBOX_UID}\\s+${SANDBOX_UID}\\s+${SANDBOX_UID}\\n`));
  assert.match(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /\nCapEff:\s+0+\n/);

  // Registered under its display name, through the proxy.
  await waitFor(async () => {
    const r = await S.peer.callTool('discover', { capability: 'sandboxed-claw' }, { timeoutMs: 20_000 });
    return r.details.mesh.agents?.some((a) => a.did === clawDid);
  }, 'the sandboxed agent in the registry', 60_000);

  // ---- pair with the cluster's one-time token ----
  const gen = await S.ctrl.callTool('pair_generate', { name: 'sandboxed-claw', slots: 1, capabilities: 'offload', expires: '1d' });
  const paired = await gw.invoke('mesh_pair', { token: gen.details.mesh.token }, 90_000);
  assert.match(text(paired), /^✅ Paired successfully with kars cluster "nemo-lab"/, text(paired));

  // ---- encrypted messages both ways with the peer outside ----
  const sent = await gw.invoke('mesh_send', { to: S.peer.did, message: 'hello from the sandbox' }, 60_000);
  assert.match(text(sent), /^✓ Message sent/, text(sent));
  const got = await S.peer.callTool('mesh_inbox', { wait_seconds: 30 }, { timeoutMs: 40_000 });
  const m = got.details.mesh.messages.find((x) => x.from === clawDid);
  assert.ok(m, text(got));
  assert.deepEqual([m.evidence, m.payload.content], ['encrypted', 'hello from the sandbox']);
  const back = await S.peer.callTool('mesh_send', { to: 'sandboxed-claw', message: 'hello from outside' }, { timeoutMs: 40_000 });
  assert.doesNotMatch(text(back), /^❌/, text(back));
  const inbox = await gw.invoke('mesh_inbox', { wait_seconds: 30 }, 45_000);
  const r = inbox.details.mesh.messages.find((x) => x.from === S.peer.did);
  assert.ok(r, text(inbox));
  assert.deepEqual([r.evidence, r.payload.content], ['encrypted', 'hello from outside']);

  // ---- discover ----
  const found = await gw.invoke('discover', { capability: 'outside-peer' });
  assert.deepEqual(found.details.mesh.agents.map((a) => a.did), [S.peer.did], text(found));

  // ---- an offload with an input file, followed to done ----
  const input = Buffer.from('quarterly numbers: 1, 2, 3\n');
  fs.writeFileSync(path.join(S.tmp, 'notes.txt'), input, { mode: 0o644 }); // the sandbox's /tmp
  const off = await gw.invoke('cloud_offload', { task: 'summarise the notes', files: ['/tmp/notes.txt'], timeout_minutes: 5 });
  assert.match(text(off), /^☁️ Offload submitted/, text(off));
  const rid = off.details.mesh.request_id;
  const { seen, last } = await followOffload((a) => gw.invoke('offload_status', a, 40_000), { timeoutMs: 150_000 });
  assert.equal(last.phase, 'done', `${JSON.stringify(last)}\nphases: ${seen.join(' ')}`);
  const report = last.outputs.find((o) => o.name === 'report.md');
  assert.ok(report, JSON.stringify(last.outputs));
  const reportFile = path.join(S.meshState, 'files', report.path);
  assert.ok(reportFile.startsWith(path.join(S.meshState, 'files', 'incoming', rid.slice(0, 8))), reportFile);
  const body = fs.readFileSync(reportFile, 'utf8');
  assert.ok(body.includes(`notes.txt — ${input.length} bytes — sha256 ${sha(input)}`), body);
  assert.equal(fs.statSync(reportFile).uid, SANDBOX_UID); // written by the sandbox user, in the state directory

  // ---- the tunnels: the plugin used exactly the preset's endpoints ----
  // Every preset endpoint carried traffic; every tunnel the proxy opened went
  // to one of them; whatever else the Gateway asked for (OpenClaw's own
  // telemetry, which honours HTTPS_PROXY too) the proxy refused.
  const want = new Set(S.preset.endpoints.map((e) => `${e.host}:${e.port}`));
  const { opened, refused } = S.proxy.outcomes();
  assert.deepEqual(new Set(opened), want, S.proxy.log().slice(-3000));
  for (const r of refused) assert.ok(!want.has(r), `the proxy refused ${r}, which the preset allows`);
  t.diagnostic(`tunnels: ${opened.length} opened (${[...want].join(', ')}); refused: ${[...new Set(refused)].join(', ') || 'none'}`);

  // ---- the preset's methods and paths are exactly the engine's requests ----
  // The registry's access log holds every request every node of this run sent
  // (the Gateway's plugin, the peer, the controller and its sandbox: one
  // engine); the registry's heartbeat comes every 60 s, so wait for one.
  const registryLog = () => S.srv.logs().split('\n').filter((l) => l.startsWith('[registry')).join('\n');
  const requests = () => [...registryLog().matchAll(/"([A-Z]+) (\/[^ "]*) HTTP\/1\.1"/g)]
    .map((x) => [x[1], x[2].split('?')[0]])
    // the harness's health probe of its servers (tests/harness/servers.mjs), not the engine's
    .filter(([, p]) => p !== '/health');
  await waitFor(() => requests().some(([mm, p]) => mm === 'POST' && p.endsWith('/heartbeat') && p.includes(clawDid)), 'a registry heartbeat from the sandboxed agent', 90_000).catch((e) => {
    throw new Error(`${e.message}\n${registryLog().split('\n').slice(-40).join('\n')}\n--- gateway:\n${gw.output().slice(-3000)}`);
  });
  // One segment after /v1/agents/ is a DID or a name: a `*` in the preset.
  const pattern = (p) => p.split('/').map((seg, i, all) => (i === 3 && all[1] === 'v1' && all[2] === 'agents' ? '*' : seg)).join('/');
  const used = new Set(requests().map(([mm, p]) => `${mm} ${pattern(p)}`));
  const registryEndpoint = S.preset.endpoints.find((e) => e.protocol === 'rest');
  const allowed = new Set(registryEndpoint.rules.map((x) => `${x.allow.method} ${x.allow.path}`));
  assert.deepEqual(used, allowed, `the engine's registry requests differ from the preset's rules`);
  for (const [mm, p] of requests()) {
    assert.ok(registryEndpoint.rules.some((x) => x.allow.method === mm && globMatches(x.allow.path, p)), `${mm} ${p} matches no rule`);
  }
  // The relay: the WebSocket paths the relay accepted, and the engine's frames, which are text only.
  const relayLog = S.srv.logs().split('\n').filter((l) => l.startsWith('[relay')).join('\n');
  const wsPaths = new Set([...relayLog.matchAll(/"WebSocket (\/[^ "]*)" \[accepted\]/g)].map((x) => x[1]));
  const wit = fs.readFileSync(path.join(ROOT, 'wit/world.wit'), 'utf8');
  assert.match(wit, /record socket-frame \{ socket: u32, text: string \}/);
  assert.match(wit, /socket-send\(socket-frame\)/);
  const relayEndpoint = S.preset.endpoints.find((e) => e.protocol === 'websocket');
  assert.deepEqual(
    new Set(relayEndpoint.rules.map((x) => `${x.allow.method} ${x.allow.path}`)),
    new Set([...wsPaths].flatMap((p) => [`GET ${p}`, `WEBSOCKET_TEXT ${p}`])),
  );

  // ---- outside the preset: the proxy's refusal in the tool's text ----
  await gw.stop();
  const refusedPort = S.registryPort;
  S.setPluginConfig(`http://localhost:${S.relayPort}`, `http://localhost:${refusedPort}`);
  const gw2 = (S.gw = await startGateway());
  const refusal = new RegExp(
    `registry unreachable at http://localhost:${refusedPort}: proxy ${S.proxy.url.replace(/[.]/g, '\\.')} \\(HTTP_PROXY\\) refused the destination localhost:${refusedPort} ` +
      `\\(CONNECT answered 403 Filtered\\): its policy does not allow this host and port; under NemoClaw/OpenShell the sandbox's network policy preset must allow localhost:${refusedPort}`,
  );
  const denied = await gw2.invokeFailing('discover', { capability: 'outside-peer' });
  assert.match(denied, /^❌ Discovery failed: /, denied);
  assert.match(denied, refusal);
  const queued = await gw2.invoke('mesh_send', { to: S.peer.did, message: 'not through' }, 60_000);
  assert.match(text(queued), new RegExp(`refused the destination localhost:${S.relayPort} \\(CONNECT answered 403 Filtered\\)`), text(queued));
  assert.match(S.proxy.log(), /Proxying refused on filtered domain "localhost"/);
  await gw2.stop();
  S.gw = undefined;

  // ---- nothing written outside the writable paths ----
  assert.deepEqual(snapshot(S.home), S.homeBefore, 'HOME changed');
  for (const d of WORLD_WRITABLE) {
    const mine = fs.readdirSync(d).filter((n) => {
      try {
        const st = fs.lstatSync(path.join(d, n));
        return st.uid === SANDBOX_UID && st.mtimeMs >= S.marker;
      } catch {
        return false;
      }
    });
    assert.deepEqual(mine, [], `the sandbox user wrote into ${d}`);
  }
  // ...and the writable ones hold the state: OpenClaw's and the plugin's.
  assert.ok(fs.existsSync(path.join(S.meshState, 'state.db')), 'no plugin state in the state directory');
  // Every established connection of the proxy went to the preset's host; the
  // refused ones never left it.
  assert.deepEqual(new Set(S.proxy.established()), new Set(S.preset.endpoints.map((e) => e.host)));
  t.diagnostic(`sandbox part: ${((Date.now() - tStart) / 1000).toFixed(1)} s`);
});
