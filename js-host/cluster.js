// A local kars cluster: the real AgentMesh registry and relay (Python,
// agent-governance-toolkit-core[server]==5.0.0) on 127.0.0.1 and a controller
// node (role "controller") that keeps the pairing ledger, all under one
// directory:
//
//   <dir>/              0700
//   <dir>/controller/   the controller's state directory (identity, ledger)
//   <dir>/sandboxes/    for sandbox processes (node-host.js `sandboxes` option)
//   <dir>/venv/         the Python venv, when the project's .venv is not there
//   <dir>/logs/         relay.log, registry.log
//   <dir>/config.json   name and ports of the last `cluster up` (kept after down,
//                       so tokens made offline name the right URLs)
//   <dir>/cluster.json  what runs now: pids, ports, URLs (removed on down)
//   <dir>/cluster.log   output of a detached cluster
//   <dir>/control.sock  the control channel (js-host/control.js), 0600
//
// `runCluster` is the foreground process (also what a detached cluster runs);
// `detachCluster`, `clusterDown` and `clusterStatus` act on it from outside.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startControlServer, listening } from './control.js';
import { killSandboxes } from './jobs.js';
import { escapeLog } from './log-escape.js';
import { isRunning, procInfo } from './proc.js';
import { makeDirs } from './storage-fs.js';
import { openclawStateDirFromEnv } from './state-location.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin', 'kars-mesh');
export const HOST = '127.0.0.1';
export const DEFAULT_REGISTRY_PORT = 8082;
export const DEFAULT_RELAY_PORT = 8083;
export const DEFAULT_CLUSTER_NAME = 'local';
export const AGT_PACKAGE = 'agent-governance-toolkit-core';
export const AGT_VERSION = '5.0.0';
const SERVER_START_TIMEOUT_MS = 60_000;
const REGISTER_TIMEOUT_MS = 30_000;
const SERVER_STOP_GRACE_MS = 3000;
const DOWN_GRACE_MS = 15_000;
const DETACH_TIMEOUT_MS = 15 * 60_000; // a first start may create the venv (pip install)

/** A failure a user can act on; `exitCode` as in cli.js (1 error, 2 usage, 3 unreachable/environment). */
export class ClusterError extends Error {
  constructor(message, exitCode = 1) {
    super(message);
    this.name = 'ClusterError';
    this.exitCode = exitCode;
  }
}

export function defaultClusterDir(env = process.env) {
  return env.KARS_MESH_CLUSTER_DIR || path.join(os.homedir(), '.kars-mesh-cluster');
}

export function clusterPaths(dir) {
  return {
    dir,
    controller: path.join(dir, 'controller'),
    sandboxes: path.join(dir, 'sandboxes'),
    venv: path.join(dir, 'venv'),
    logs: path.join(dir, 'logs'),
    config: path.join(dir, 'config.json'),
    state: path.join(dir, 'cluster.json'),
    log: path.join(dir, 'cluster.log'),
    sock: path.join(dir, 'control.sock'),
  };
}

/** ` --dir DIR` when DIR is not the default, for the commands we print. */
export function dirFlag(dir, env = process.env) {
  return path.resolve(dir) === path.resolve(defaultClusterDir(env)) ? '' : ` --dir ${shellQuote(dir)}`;
}

function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- files ----------------------------------------------------------------

/** Create the directory 0700 (or tighten an existing one we own). */
export function ensureDir(dir) {
  try {
    makeDirs(dir, 0o700);
  } catch (e) {
    throw new ClusterError(`cannot create ${dir}: ${e.message}; pick another with --dir`, 3);
  }
  const st = fs.statSync(dir);
  if (!st.isDirectory()) throw new ClusterError(`${dir} is not a directory; pick another with --dir`, 3);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
    throw new ClusterError(`${dir} belongs to another user; pick another with --dir`, 3);
  }
  if ((st.mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700);
}

function writeJson(file, value) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, file);
}

export function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Name and ports of the last `cluster up` on this directory (or the defaults). */
export function clusterConfig(dir) {
  const c = readJson(clusterPaths(dir).config) ?? {};
  const port = (p, d) => (Number.isInteger(p) && p > 0 && p < 65536 ? p : d);
  return {
    name: typeof c.name === 'string' && c.name ? c.name : DEFAULT_CLUSTER_NAME,
    relayPort: port(c.relayPort, DEFAULT_RELAY_PORT),
    registryPort: port(c.registryPort, DEFAULT_REGISTRY_PORT),
    // Not reused (a command to run is given each time), only compared.
    exec: typeof c.exec === 'string' && c.exec ? c.exec : undefined,
  };
}

export const urlFor = (port) => `http://${HOST}:${port}`;

// ---- processes ------------------------------------------------------------

/** A record of a process we started: `{pid, starttime, match: [strings its command line holds]}`. */
function processRecord(pid, match) {
  return { pid, starttime: procInfo(pid)?.starttime, match };
}

function signalGroup(pid, sig) {
  try {
    process.kill(-pid, sig);
    return;
  } catch {
    /* not a group leader, or gone */
  }
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

async function waitGone(rec, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isRunning(rec)) return true;
    await sleep(100);
  }
  return !isRunning(rec);
}

/** SIGTERM (the group when `group`), wait `graceMs`, then SIGKILL. Returns how it ended. */
async function terminate(rec, { group = false, graceMs }) {
  if (!isRunning(rec)) return 'not running';
  const send = (sig) => (group ? signalGroup(rec.pid, sig) : process.kill(rec.pid, sig));
  try { send('SIGTERM'); } catch { /* gone */ }
  if (await waitGone(rec, graceMs)) return 'stopped';
  try { send('SIGKILL'); } catch { /* gone */ }
  return (await waitGone(rec, 3000)) ? 'killed' : 'still running';
}

// ---- python ---------------------------------------------------------------

function run(cmd, args, { stdio = 'ignore', signal, cwd } = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(cmd, args, { stdio, signal, cwd });
    } catch (e) {
      resolve({ code: -1, error: e });
      return;
    }
    let output = '';
    child.stdout?.on('data', (d) => { output += d; });
    child.stderr?.on('data', (d) => { output += d; });
    child.on('error', (error) => resolve({ code: -1, error, output }));
    child.on('close', (code) => resolve({ code, output }));
  });
}

const CHECK_VENV = [
  'import importlib.metadata as m',
  'import agentmesh.relay, agentmesh.registry, fastapi, uvicorn, websockets',
  `assert m.version('${AGT_PACKAGE}') == '${AGT_VERSION}'`,
].join('\n');

async function venvOk(python) {
  if (!fs.existsSync(python)) return false;
  return (await run(python, ['-c', CHECK_VENV])).code === 0;
}

/**
 * A Python with the real relay and registry: $KARS_MESH_PYTHON, the project's
 * .venv (scripts/setup-venv.sh), <dir>/venv, or a new <dir>/venv made with the
 * same pinned pip install.
 */
export async function findPython(dir, { log, signal, env = process.env }) {
  if (env.KARS_MESH_PYTHON) {
    if (await venvOk(env.KARS_MESH_PYTHON)) return env.KARS_MESH_PYTHON;
    throw new ClusterError(
      `KARS_MESH_PYTHON=${env.KARS_MESH_PYTHON} lacks ${AGT_PACKAGE}[server]==${AGT_VERSION}; install it there or unset KARS_MESH_PYTHON`,
      3,
    );
  }
  const project = path.join(ROOT, '.venv', 'bin', 'python');
  if (await venvOk(project)) return project;
  const venv = clusterPaths(dir).venv;
  const python = path.join(venv, 'bin', 'python');
  if (await venvOk(python)) return python;

  const py3 = await run('python3', ['-c', 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)']);
  if (py3.error) throw new ClusterError('python3 is not installed: install Python >= 3.11 (the relay and registry are Python)', 3);
  if (py3.code !== 0) throw new ClusterError('python3 is older than 3.11: install Python >= 3.11', 3);
  if (!fs.existsSync(python)) {
    log('info', `creating the Python venv ${venv}`);
    const r = await run('python3', ['-m', 'venv', venv], { stdio: ['ignore', 'pipe', 'pipe'], signal });
    if (r.code !== 0) {
      throw new ClusterError(`python3 -m venv ${venv} failed (on Debian: apt-get install python3-venv):\n${r.output ?? r.error?.message}`, 3);
    }
  }
  log('info', `installing ${AGT_PACKAGE}[server]==${AGT_VERSION} into ${venv} (once; takes a minute)`);
  const r = await run(python, ['-m', 'pip', 'install', '-q', `${AGT_PACKAGE}[server]==${AGT_VERSION}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    signal,
  });
  if (r.code !== 0 || !(await venvOk(python))) {
    throw new ClusterError(
      `pip install '${AGT_PACKAGE}[server]==${AGT_VERSION}' into ${venv} failed; check the network, or run \`bash scripts/setup-venv.sh\` in the kars-mesh checkout:\n${(r.output ?? r.error?.message ?? '').slice(-2000)}`,
      3,
    );
  }
  return python;
}

// ---- relay and registry ---------------------------------------------------

// `python -m <module> --host H --port P`, with the parent-death signal set
// first (prctl(PR_SET_PDEATHSIG=1, SIGKILL)): the servers die with the cluster
// process even if it is SIGKILLed.
export const LAUNCH = [
  'import ctypes, runpy, signal, sys',
  'try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)',
  'except Exception: pass',
  'mod = sys.argv[1]; sys.argv = [mod] + sys.argv[2:]',
  "runpy.run_module(mod, run_name='__main__', alter_sys=True)",
].join('\n');

/** Refuse a port something already listens on, naming the flag that changes it. */
export function checkPortFree(port, what, flag) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (e) => {
      if (e.code === 'EADDRINUSE') {
        reject(new ClusterError(
          `port ${port} (${what}) is already in use on ${HOST}: pick another with ${flag} N, or stop what listens there (an older cluster: kars-mesh cluster down)`,
          3,
        ));
      } else {
        reject(new ClusterError(`cannot listen on ${HOST}:${port} (${what}): ${e.message}; pick another port with ${flag} N`, 3));
      }
    });
    srv.listen(port, HOST, () => srv.close(() => resolve()));
  });
}

async function healthy(url) {
  try {
    const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    return r.status === 200;
  } catch {
    return false;
  }
}

const live = new Set(); // server children, SIGKILLed (as groups) if this process exits without stopping them
let exitHooked = false;

class Server {
  constructor(name, module, port, logFile) {
    this.name = name;
    this.module = module;
    this.port = port;
    this.url = urlFor(port);
    this.logFile = logFile;
    this.child = null;
    this.exited = null;
  }

  async start(python, cwd, { signal }) {
    if (!exitHooked) {
      exitHooked = true;
      process.on('exit', () => { for (const c of live) signalGroup(c.pid, 'SIGKILL'); });
    }
    const fd = fs.openSync(this.logFile, 'a', 0o600);
    let child;
    try {
      child = spawn(python, ['-c', LAUNCH, this.module, '--host', HOST, '--port', String(this.port), '--log-level', 'warning'], {
        cwd,
        detached: true, // own process group: a Ctrl-C on the terminal reaches only us; we stop them in order
        stdio: ['ignore', fd, fd],
        env: { ...serverEnv(process.env), PYTHONUNBUFFERED: '1' },
      });
    } finally {
      fs.closeSync(fd);
    }
    this.child = child;
    live.add(child);
    let spawnError = null;
    child.on('error', (e) => { spawnError = e; });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, sig) => {
        live.delete(child);
        resolve({ code, signal: sig });
      });
    });
    let exitInfo = null;
    this.exited.then((x) => { exitInfo = x; });
    const deadline = Date.now() + SERVER_START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (signal?.aborted) throw new ClusterError('interrupted', 130);
      if (spawnError) throw new ClusterError(`${this.name}: cannot start ${python}: ${spawnError.message}`, 3);
      if (exitInfo) {
        throw new ClusterError(
          `${this.name} exited during startup (code ${exitInfo.code}, signal ${exitInfo.signal}); see ${this.logFile}:\n${tail(this.logFile)}`,
          3,
        );
      }
      if (await healthy(this.url)) {
        this.record = processRecord(child.pid, [this.module, `--port ${this.port}`]);
        return;
      }
      await sleep(150);
    }
    throw new ClusterError(`${this.name} did not answer ${this.url}/health within ${SERVER_START_TIMEOUT_MS / 1000} s; see ${this.logFile}`, 3);
  }

  get running() {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop() {
    const child = this.child;
    if (!child) return;
    if (this.running) {
      signalGroup(child.pid, 'SIGTERM');
      const t = setTimeout(() => signalGroup(child.pid, 'SIGKILL'), SERVER_STOP_GRACE_MS);
      await this.exited;
      clearTimeout(t);
    }
    // Anything the server forked is in its group.
    signalGroup(child.pid, 'SIGKILL');
  }
}

function tail(file, bytes = 4000) {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-bytes);
  } catch {
    return '';
  }
}

// ---- the cluster process --------------------------------------------------

async function waitRegistered(node, signal) {
  const deadline = Date.now() + REGISTER_TIMEOUT_MS;
  let reg = await node.callTool('mesh_register', {}, { timeoutMs: REGISTER_TIMEOUT_MS, signal });
  let last = reg?.content?.[0]?.text;
  while (Date.now() < deadline) {
    const id = await node.callTool('mesh_identity', {}, { timeoutMs: 5000, signal });
    const m = id?.details?.mesh ?? {};
    if (m.registered && m.connected) return;
    if (!m.registered && reg?.details?.mesh?.error) {
      reg = await node.callTool('mesh_register', {}, { timeoutMs: REGISTER_TIMEOUT_MS, signal });
      last = reg?.content?.[0]?.text;
    }
    await sleep(150);
  }
  throw new ClusterError(`the controller did not register and connect within ${REGISTER_TIMEOUT_MS / 1000} s (${last ?? 'no answer'})`, 3);
}

/** The text `cluster up` prints once everything is healthy. */
export function summary(state, env = process.env) {
  const d = dirFlag(state.dir, env);
  const lines = [
    `✅ kars cluster "${state.name}" is up (${state.mode === 'detached' ? `in the background, pid ${state.main.pid}` : 'Ctrl-C stops it'})`,
    `  registry    ${state.registry.url}`,
    `  relay       ${state.relay.url}`,
    `  controller  ${state.controller.did}`,
    `  directory   ${state.dir}`,
  ];
  if (state.mode === 'detached') lines.push(`  log         ${state.log}`);
  // Which executor the sandboxes run: a restart without --exec falls back to
  // the built-in one, which runs nothing (a walk-through's offloads then
  // "finished" with its receipt report).
  lines.push(state.sandboxes?.exec
    ? `  sandboxes   run ${state.sandboxes.exec}${state.sandboxes.execUnisolated ? '  (NOT isolated: --exec-unisolated)' : ''}`
    : '  sandboxes   the built-in executor: it runs nothing and reports what it received (cluster up --exec CMD runs your command)');
  lines.push(
    '',
    'Pair a client:',
    `  1. kars-mesh pair generate --name NAME${d}      (prints a one-time azcp_1_ token)`,
    '  2. on the client: kars-mesh pair-with - < token.txt   (the token saved in a file; or the mesh_pair tool with {"token": "<token>"})',
    `Pairings: kars-mesh pair list${d}    Stop: ${state.mode === 'detached' ? `kars-mesh cluster down${d}` : 'Ctrl-C'}`,
  );
  return lines.join('\n');
}

/**
 * Run a cluster in this process until `signal` aborts (or a part of it dies).
 * Prints the summary with `out` once healthy; returns the exit code.
 *
 * @param {{dir: string, relayPort?: number, registryPort?: number, name?: string, exec?: string, execUnisolated?: boolean,
 *          verbose?: boolean, mode?: 'foreground'|'detached'}} opts
 * @param {{out: Function, err: Function, signal?: AbortSignal, env?: object, createNodeImpl?: Function}} io
 */
export async function runCluster(opts, { out, err, signal, env = process.env, createNodeImpl }) {
  const dir = path.resolve(opts.dir);
  const p = clusterPaths(dir);
  const mode = opts.mode ?? 'foreground';
  const stamp = () => new Date().toISOString();
  const log = (level, message) => {
    if (opts.verbose || level === 'warn' || level === 'error' || level === 'cluster') {
      err(`${stamp()} ${level === 'cluster' ? 'info' : level}: ${escapeLog(message)}`);
    }
  };
  const say = (message) => log('cluster', message);

  ensureDir(dir);
  const existing = readJson(p.state);
  if (existing && isRunning(existing.main)) {
    throw new ClusterError(
      `a cluster is already running in ${dir} (pid ${existing.main.pid}); stop it with: kars-mesh cluster down${dirFlag(dir, env)}`,
      1,
    );
  }
  if (existing) fs.rmSync(p.state, { force: true }); // left by a cluster that died

  const prev = clusterConfig(dir);
  if (prev.exec && !opts.exec) log('warn', execDropped(dir, prev.exec));
  const name = opts.name ?? prev.name;
  const registryPort = opts.registryPort ?? prev.registryPort;
  const relayPort = opts.relayPort ?? prev.relayPort;
  if (registryPort === relayPort) {
    throw new ClusterError(`the relay and the registry cannot share port ${relayPort}: change --relay-port or --registry-port`, 2);
  }
  await checkPortFree(registryPort, 'registry', '--registry-port');
  await checkPortFree(relayPort, 'relay', '--relay-port');

  const state = {
    version: 1,
    name,
    dir,
    mode,
    phase: 'starting',
    startedAt: new Date().toISOString(),
    main: processRecord(process.pid, ['cluster']),
    registry: { url: urlFor(registryPort), port: registryPort },
    relay: { url: urlFor(relayPort), port: relayPort },
    controller: { stateDir: p.controller },
    controlSocket: p.sock,
    log: mode === 'detached' ? p.log : undefined,
    sandboxes: { dir: p.sandboxes, exec: opts.exec, execUnisolated: opts.exec ? !!opts.execUnisolated : undefined },
  };
  writeJson(p.state, state);

  fs.mkdirSync(p.logs, { recursive: true, mode: 0o700 });
  fs.mkdirSync(p.sandboxes, { recursive: true, mode: 0o700 });
  const registry = new Server('registry', 'agentmesh.registry', registryPort, path.join(p.logs, 'registry.log'));
  const relay = new Server('relay', 'agentmesh.relay', relayPort, path.join(p.logs, 'relay.log'));
  let controller = null;
  let control = null;

  let stopping = false;
  const shutdown = async () => {
    stopping = true;
    await control?.close().catch(() => {});
    if (controller) await controller.stop().catch(() => {});
    // Sandboxes outlive a controller restart, not the cluster.
    await killSandboxes(p.sandboxes).catch(() => {});
    await Promise.allSettled([relay.stop(), registry.stop()]);
    const now = readJson(p.state);
    if (now?.main?.pid === process.pid) fs.rmSync(p.state, { force: true });
  };

  try {
    const python = await findPython(dir, { log: (_l, m) => say(m), signal, env });
    say(`starting the registry on ${registry.url} and the relay on ${relay.url}`);
    await Promise.all([registry.start(python, p.logs, { signal }), relay.start(python, p.logs, { signal })]);
    state.registry.process = registry.record;
    state.relay.process = relay.record;
    writeJson(p.state, state);

    const createNode = createNodeImpl ?? (await import('./node-host.js')).createNode;
    controller = await createNode({
      stateDir: p.controller,
      relayUrl: relay.url,
      registryUrl: registry.url,
      name: `${name}-controller`,
      role: 'controller',
      clusterName: name,
      // The --exec command runs isolated from the whole cluster directory
      // (controller keys, control socket, every sandbox) unless the operator
      // opted out with --exec-unisolated.
      sandboxes: {
        dir: p.sandboxes,
        exec: opts.exec || undefined,
        execUnisolated: !!(opts.exec && opts.execUnisolated),
        hide: [dir, ...knownAgentStates()],
        relayUrl: relay.url,
        registryUrl: registry.url,
      },
      log,
    });
    await waitRegistered(controller, signal);
    state.controller.did = controller.did;

    control = await startControlServer(p.sock, (tool, args) => controller.callTool(tool, args, { timeoutMs: 30_000 }), { log });

    writeJson(p.config, { name, relayPort, registryPort, exec: opts.exec || undefined });
    state.phase = 'ready';
    state.readyAt = new Date().toISOString();
    writeJson(p.state, state);
  } catch (e) {
    await shutdown();
    if (signal?.aborted) throw new ClusterError('interrupted while starting; everything started was stopped', 130);
    if (e instanceof ClusterError) throw e;
    if (e?.name === 'StateDirError') {
      throw new ClusterError(`${e.message} (is another kars-mesh command using ${p.controller}? wait for it, then retry)`, 3);
    }
    throw new ClusterError(`cannot start the cluster: ${e?.message ?? e}`, 1);
  }

  if (opts.exec && opts.execUnisolated) {
    log('warn', 'sandboxes run the --exec command WITHOUT isolation (--exec-unisolated): it can read the controller\'s keys and every sandbox\'s directory');
  }
  out(summary(state, env));

  // Run until asked to stop, or until a part dies.
  const why = await new Promise((resolve) => {
    if (signal?.aborted) return resolve('stop requested');
    signal?.addEventListener('abort', () => resolve('stop requested'), { once: true });
    relay.exited.then((x) => resolve(`the relay exited unexpectedly (code ${x.code}, signal ${x.signal}); see ${relay.logFile}`));
    registry.exited.then((x) => resolve(`the registry exited unexpectedly (code ${x.code}, signal ${x.signal}); see ${registry.logFile}`));
    controller.closed.then((e) => resolve(`the controller node stopped${e ? `: ${e.message}` : ''}`));
  });
  const clean = why === 'stop requested';
  (clean ? say : (m) => log('error', m))(clean ? 'stopping the cluster' : `${why}; stopping the cluster`);
  if (!stopping) await shutdown();
  say('cluster stopped');
  return clean ? 0 : 1;
}

/**
 * Start `cluster up` as a background process (its output in <dir>/cluster.log)
 * and wait until it is healthy. Returns the exit code.
 */
export async function detachCluster(args, { dir, out, err, signal, env = process.env }) {
  dir = path.resolve(dir);
  const p = clusterPaths(dir);
  ensureDir(dir);
  const existing = readJson(p.state);
  if (existing && isRunning(existing.main)) {
    throw new ClusterError(
      `a cluster is already running in ${dir} (pid ${existing.main.pid}); stop it with: kars-mesh cluster down${dirFlag(dir, env)}`,
      1,
    );
  }
  // Said here too: the detached cluster's own warning goes to its log.
  const prevExec = clusterConfig(dir).exec;
  if (prevExec && !args.includes('--exec')) err(`kars-mesh cluster up: warning: ${execDropped(dir, prevExec)}`);
  const logStart = fs.existsSync(p.log) ? fs.statSync(p.log).size : 0;
  const fd = fs.openSync(p.log, 'a', 0o600);
  let child;
  try {
    child = spawn(process.execPath, [BIN, 'cluster', 'up', '--dir', dir, ...args], {
      cwd: dir, // a daemon does not pin the caller's working directory
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { ...env, KARS_MESH_CLUSTER_DETACHED: '1' },
    });
  } finally {
    fs.closeSync(fd);
  }
  err(`kars-mesh: starting the cluster in the background (log: ${p.log})`);
  let exited = null;
  child.on('exit', (code, sig) => { exited = { code, sig }; });
  child.on('error', (e) => { exited = { code: -1, error: e }; });
  const deadline = Date.now() + DETACH_TIMEOUT_MS;
  try {
    while (Date.now() < deadline) {
      if (signal?.aborted) {
        try { process.kill(child.pid, 'SIGTERM'); } catch { /* gone */ }
        err('kars-mesh: interrupted; the background cluster is being stopped');
        return 130;
      }
      const st = readJson(p.state);
      if (st?.main?.pid === child.pid && st.phase === 'ready') {
        out(summary(st, env));
        return 0;
      }
      if (exited) {
        const logText = readLogFrom(p.log, logStart);
        err(`kars-mesh: the cluster did not start (exit code ${exited.code ?? exited.sig}):`);
        if (logText.trim()) err(logText.trimEnd());
        return exited.code > 0 && exited.code < 128 ? exited.code : 1;
      }
      await sleep(150);
    }
    try { process.kill(child.pid, 'SIGTERM'); } catch { /* gone */ }
    err(`kars-mesh: the cluster was not healthy after ${DETACH_TIMEOUT_MS / 60000} minutes; stopped it; see ${p.log}`);
    return 3;
  } finally {
    child.unref();
  }
}

function readLogFrom(file, offset) {
  try {
    const buf = fs.readFileSync(file);
    return buf.subarray(offset).toString('utf8').slice(-8000);
  } catch {
    return '';
  }
}

/** Stop what <dir>/cluster.json lists. Returns lines describing what happened. */
export async function clusterDown(dir, { graceMs = DOWN_GRACE_MS } = {}) {
  dir = path.resolve(dir);
  const p = clusterPaths(dir);
  const st = readJson(p.state);
  if (!st) {
    return { running: false, lines: [`no cluster is running in ${dir} (no ${p.state})`] };
  }
  const lines = [];
  // The cluster process stops the controller, then the servers, then removes cluster.json.
  const main = await terminate(st.main, { graceMs });
  lines.push(`cluster process ${st.main?.pid}: ${main}`);
  // Sandboxes left by a cluster process that was killed outright.
  const sandboxes = await killSandboxes(p.sandboxes).catch(() => 0);
  if (sandboxes) lines.push(`stopped ${sandboxes} sandbox process(es)`);
  for (const [what, s] of [['relay', st.relay], ['registry', st.registry]]) {
    if (!s?.process) continue;
    const r = await terminate(s.process, { group: true, graceMs: SERVER_STOP_GRACE_MS });
    lines.push(`${what} ${s.process.pid} (${s.url}): ${r === 'not running' ? 'stopped' : r}`);
  }
  const left = [st.main, st.relay?.process, st.registry?.process].filter((r) => r && isRunning(r));
  if (left.length) {
    throw new ClusterError(`could not stop pid ${left.map((r) => r.pid).join(', ')}; kill it by hand, then run cluster down again`, 1);
  }
  fs.rmSync(p.state, { force: true });
  if (fs.existsSync(p.sock) && !(await listening(p.sock))) fs.rmSync(p.sock, { force: true });
  return { running: true, lines };
}

/** What runs in <dir>: `{running, healthy, state, lines}`. */
export async function clusterStatus(dir) {
  dir = path.resolve(dir);
  const p = clusterPaths(dir);
  const st = readJson(p.state);
  if (!st) return { running: false, healthy: false, lines: [`no cluster is running in ${dir}`] };
  const mainUp = isRunning(st.main);
  if (!mainUp) {
    return {
      running: false,
      healthy: false,
      state: st,
      lines: [`no cluster is running in ${dir} (${p.state} is left from pid ${st.main?.pid}, which is gone; cluster up replaces it)`],
    };
  }
  const [regOk, relayOk] = await Promise.all([healthy(st.registry.url), healthy(st.relay.url)]);
  const ok = st.phase === 'ready' && regOk && relayOk;
  const lines = [
    `kars cluster "${st.name}" in ${dir}: ${st.phase === 'ready' ? (ok ? 'running' : 'running, but not healthy') : st.phase}`,
    `  cluster process  pid ${st.main.pid} (${st.mode}, since ${st.startedAt})`,
    `  registry         ${st.registry.url}  pid ${st.registry.process?.pid ?? '-'}  ${regOk ? 'healthy' : 'NOT answering /health'}`,
    `  relay            ${st.relay.url}  pid ${st.relay.process?.pid ?? '-'}  ${relayOk ? 'healthy' : 'NOT answering /health'}`,
    `  controller       ${st.controller.did ?? '(starting)'}`,
  ];
  if (st.sandboxes?.exec) lines.push(`  sandbox exec     ${st.sandboxes.exec}${st.sandboxes.execUnisolated ? '  (NOT isolated: --exec-unisolated)' : ''}`);
  return { running: true, healthy: ok, state: st, lines };
}

/**
 * Agents' state directories this operator's environment names (beside the
 * home's defaults, which jobs.js hides anyway): KARS_MESH_STATE and the
 * OpenClaw plugin's under OPENCLAW_STATE_DIR. Hidden from --exec commands;
 * an agent's state anywhere else is not known here (README, SECURITY.md).
 */
export function knownAgentStates(env = process.env, home = os.homedir()) {
  const out = [];
  const state = env.KARS_MESH_STATE?.trim();
  // As the OpenClaw plugin reads it: ~ and a relative path from the home directory.
  if (state) out.push(path.resolve(home, state.replace(/^~(?=$|[\\/])/, home)));
  if (env.OPENCLAW_STATE_DIR?.trim()) out.push(path.join(openclawStateDirFromEnv(env, home), 'kars-mesh'));
  return out.filter((d) => {
    try {
      return fs.statSync(d).isDirectory();
    } catch {
      return false;
    }
  });
}

/**
 * The relay's and registry's environment: the operator's, less what is
 * secret to kars-mesh or the operator (relay token, identity seed, pairing
 * or cloud credentials): they need none of it, and their logs and crash
 * reports are not ours to keep clean. The local relay runs without a
 * token (README).
 */
export function serverEnv(env) {
  const secret = /TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|SEED|PRIVATE|API_?KEY|ACCESS_?KEY|_KEY$/i;
  // The relay's and registry's own settings (AGENTMESH_*, PYTHON*) pass,
  // except a relay token: the local relay runs without one.
  const own = (k) => (k.startsWith('AGENTMESH_') && k !== 'AGENTMESH_RELAY_TOKEN') || k.startsWith('PYTHON');
  return Object.fromEntries(Object.entries(env).filter(([k]) => own(k) || (!k.startsWith('KARS_') && !k.startsWith('PINNED_') && !secret.test(k))));
}

/** A restart without --exec after one with it: the built-in executor runs. */
function execDropped(dir, exec) {
  return `the last cluster up in ${dir} ran --exec ${JSON.stringify(exec)}; this one runs the built-in executor, which runs no command: give --exec again to run it`;
}
