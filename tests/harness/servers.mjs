// Start the REAL AgentMesh registry and relay (agent-governance-toolkit-core
// 5.0.0 from .venv, see scripts/setup-venv.sh) on free loopback ports.
//
//   const s = await startServers();
//   s.relayUrl, s.registryUrl            // 'http://127.0.0.1:<port>'
//   await s.restartRelay()               // same port; loses every queued frame
//   await s.restartRegistry()            // same port; loses every agent/bundle
//   s.logs()                             // captured stdout/stderr of both
//   await s.stop()
//
// Children run in their own process group (killed as a group on stop and on
// process exit) and additionally get PR_SET_PDEATHSIG=SIGKILL, so they die
// even if this Node process is SIGKILLed.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
// `python -m <module> --host H --port P` with the parent-death signal set
// first: the same launcher `kars-mesh cluster up` uses.
import { LAUNCH } from '../../js-host/cluster.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const VENV_PYTHON = path.join(ROOT, '.venv/bin/python');
const HOST = '127.0.0.1';
const LOG_LIMIT = 256 * 1024;


const live = new Set(); // every running child, for the exit hook

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
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      for (const c of live) killGroup(c, 'SIGKILL');
      process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]);
    });
  }
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function healthy(url) {
  try {
    const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    return r.status === 200;
  } catch {
    return false;
  }
}

class Server {
  constructor(name, module, port, env) {
    this.name = name;
    this.module = module;
    this.port = port;
    this.env = env;
    this.url = `http://${HOST}:${port}`;
    this.log = '';
    this.child = null;
    this.starts = 0;
  }

  append(tag, chunk) {
    this.log += chunk.toString().replace(/^(?=.)/gm, `[${this.name}#${this.starts} ${tag}] `);
    if (this.log.length > LOG_LIMIT) this.log = this.log.slice(-LOG_LIMIT);
  }

  async start(timeoutMs) {
    this.starts += 1;
    const t0 = Date.now();
    const child = spawn(
      VENV_PYTHON,
      ['-c', LAUNCH, this.module, '--host', HOST, '--port', String(this.port), '--log-level', 'info'],
      {
        cwd: ROOT,
        detached: true, // own process group
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PYTHONUNBUFFERED: '1', ...this.env },
      },
    );
    this.child = child;
    live.add(child);
    child.stdout.on('data', (d) => this.append('out', d));
    child.stderr.on('data', (d) => this.append('err', d));
    child.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        live.delete(child);
        this.append('exit', `exited code=${code} signal=${signal}\n`);
        resolve();
      });
    });
    let spawnError = null;
    child.on('error', (e) => { spawnError = e; });

    const deadline = t0 + timeoutMs;
    let exited = false;
    child.exited.then(() => { exited = true; });
    while (Date.now() < deadline) {
      if (spawnError) throw new Error(`${this.name}: spawn failed: ${spawnError.message}`);
      if (exited) throw new Error(`${this.name} exited during startup:\n${this.log}`);
      if (await healthy(this.url)) {
        this.startMs = Date.now() - t0;
        return;
      }
      await sleep(100);
    }
    await this.stop();
    throw new Error(`${this.name} not healthy on ${this.url} after ${timeoutMs} ms:\n${this.log}`);
  }

  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) {
      killGroup(child, 'SIGTERM');
      const t = setTimeout(() => killGroup(child, 'SIGKILL'), 3000);
      await child.exited;
      clearTimeout(t);
    }
  }
}

/**
 * @param {{relayPort?: number, registryPort?: number, timeoutMs?: number,
 *          relayEnv?: object, registryEnv?: object}} [opts]
 */
export async function startServers(opts = {}) {
  if (!existsSync(VENV_PYTHON)) {
    throw new Error(`${VENV_PYTHON} missing: run \`bash scripts/setup-venv.sh\` first`);
  }
  hookExit();
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const registryPort = opts.registryPort ?? (await freePort());
  let relayPort = opts.relayPort ?? (await freePort());
  while (relayPort === registryPort) relayPort = await freePort();

  const registry = new Server('registry', 'agentmesh.registry', registryPort, opts.registryEnv ?? {});
  const relay = new Server('relay', 'agentmesh.relay', relayPort, opts.relayEnv ?? {});
  try {
    await Promise.all([registry.start(timeoutMs), relay.start(timeoutMs)]);
  } catch (e) {
    await Promise.allSettled([registry.stop(), relay.stop()]);
    throw e;
  }

  return {
    relayUrl: relay.url,
    registryUrl: registry.url,
    relayPort,
    registryPort,
    /** The relay's process id (its CPU time is in /proc/<pid>/stat), or undefined when it is not running. */
    relayPid: () => relay.child?.pid,
    /** ms the last start of each server took until /health answered 200 */
    startTimes: () => ({ relay: relay.startMs, registry: registry.startMs }),
    async restartRelay() {
      await relay.stop();
      await relay.start(timeoutMs);
    },
    async restartRegistry() {
      await registry.stop();
      await registry.start(timeoutMs);
    },
    async stop() {
      await Promise.allSettled([relay.stop(), registry.stop()]);
    },
    logs() {
      return `${registry.log}\n${relay.log}`;
    },
  };
}
