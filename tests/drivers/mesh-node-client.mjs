// Parent side of tests/drivers/mesh-node.mjs: spawn a kars-mesh node in its
// own process and talk to it.
//
//   const n = await spawnMeshNode({ stateDir, relayUrl, registryUrl });
//   n.did
//   const r = await n.request({ cmd: 'send', to, message: {...} }); // {ok, id, session, ...}
//   n.on('message', (m) => ...)   // every inbox message the reader printed
//   await n.next((e) => e.event === 'message', 10_000)
//   await n.kill()                // SIGKILL; pending requests reject with err.killed = true
//   await n.stop()                // graceful
//
// The child gets EOF on stdin when this process dies, and stops; on a normal
// exit of this process every child still running is SIGKILLed.
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const DRIVER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'mesh-node.mjs');

const live = new Set();
let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  });
}

/**
 * @param {{stateDir: string, relayUrl: string, registryUrl: string, name?: string,
 *          echo?: boolean, reader?: boolean, consume?: boolean, waitSeconds?: number, readyTimeoutMs?: number,
 *          label?: string, stderrTail?: number, buffer?: boolean, env?: object,
 *          on?: Record<string, (ev: object) => void>}} o
 *   env: extra environment variables for the driver (e.g. KARS_MESH_TEST_CRASH_AT)
 *   on: listeners attached before the driver starts. A listener attached after
 *       `await spawnMeshNode()` misses what the driver printed in the same
 *       stdout chunk as 'ready' (readline emits a chunk's lines synchronously,
 *       before the awaiting code resumes): after a restart, the inbox entries
 *       that survived it are printed right then.
 *   buffer: false = events nobody waits for are only emitted, not kept for next()
 */
export async function spawnMeshNode(o) {
  hookExit();
  const args = [DRIVER, '--state', o.stateDir, '--relay', o.relayUrl, '--registry', o.registryUrl];
  if (o.name) args.push('--name', o.name);
  if (o.echo) args.push('--echo');
  if (o.reader === false) args.push('--no-reader');
  if (o.consume) args.push('--consume');
  if (o.waitSeconds) args.push('--wait-seconds', String(o.waitSeconds));
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env: o.env ? { ...process.env, ...o.env } : undefined });
  live.add(child);

  const em = new EventEmitter();
  em.setMaxListeners(50);
  for (const [name, fn] of Object.entries(o.on ?? {})) em.on(name, fn);
  const label = o.label ?? path.basename(o.stateDir);
  const tailMax = o.stderrTail ?? 256 * 1024;
  let stderr = '';
  const events = []; // unconsumed, for next()
  const waiters = [];
  const pending = new Map(); // req -> {resolve, reject}
  let reqSeq = 0;
  let exited = false;
  let exitInfo = null;

  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > tailMax) stderr = stderr.slice(-tailMax);
  });
  const exitP = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = true;
    exitInfo = { code, signal };
    live.delete(child);
    const err = new Error(`${label}: driver exited (${signal ?? code})`);
    err.killed = signal === 'SIGKILL';
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    for (const w of waiters.splice(0)) w.reject(new Error(`${label}: driver exited (${signal ?? code}) while waiting for ${w.desc}\n${stderr.slice(-4000)}`));
    em.emit('exit', exitInfo);
    resolve(exitInfo);
  }));
  child.on('error', (e) => { stderr += `spawn error: ${e.message}\n`; });
  child.stdin.on('error', () => { /* EPIPE after a kill */ });

  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let ev;
    try { ev = JSON.parse(line); } catch { stderr += `[non-JSON stdout] ${line}\n`; return; }
    ev.at = performance.now();
    if (ev.event === 'reply' && pending.has(ev.req)) {
      const p = pending.get(ev.req);
      pending.delete(ev.req);
      p.resolve(ev);
      return;
    }
    em.emit(ev.event, ev);
    const i = waiters.findIndex((w) => w.pred(ev));
    if (i >= 0) waiters.splice(i, 1)[0].resolve(ev);
    else if (o.buffer !== false || ev.event === 'ready' || ev.event === 'fatal') events.push(ev);
  });

  function next(pred = () => true, timeoutMs = 10_000, desc = String(pred)) {
    const i = events.findIndex(pred);
    if (i >= 0) return Promise.resolve(events.splice(i, 1)[0]);
    if (exited) return Promise.reject(new Error(`${label}: driver already exited; wanted ${desc}`));
    return new Promise((resolve, reject) => {
      const w = { pred, desc };
      const t = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`${label}: timed out after ${timeoutMs} ms waiting for ${desc}\nstderr tail:\n${stderr.slice(-4000)}`));
      }, timeoutMs);
      w.resolve = (ev) => { clearTimeout(t); resolve(ev); };
      w.reject = (e) => { clearTimeout(t); reject(e); };
      waiters.push(w);
    });
  }

  function request(cmd) {
    if (exited) {
      const err = new Error(`${label}: driver is not running`);
      err.killed = exitInfo?.signal === 'SIGKILL';
      err.notRunning = true;
      return Promise.reject(err);
    }
    const req = ++reqSeq;
    return new Promise((resolve, reject) => {
      pending.set(req, { resolve, reject });
      child.stdin.write(`${JSON.stringify({ ...cmd, req })}\n`);
    });
  }

  let ready;
  try {
    ready = await next((e) => e.event === 'ready' || e.event === 'fatal', o.readyTimeoutMs ?? 20_000, 'ready');
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  if (ready.event !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(`${label}: driver failed to start: ${ready.error}\n${stderr.slice(-4000)}`);
  }

  // (a getter must be defined, not Object.assign'ed: assign would copy its value once)
  Object.defineProperty(em, 'alive', { get: () => !exited, enumerable: true });
  return Object.assign(em, {
    did: ready.did,
    pid: child.pid,
    child,
    label,
    request,
    next,
    exited: exitP,
    stderr: () => stderr,
    kill() {
      if (!exited) child.kill('SIGKILL');
      return exitP;
    },
    async stop(timeoutMs = 5000) {
      if (exited) return exitInfo;
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      request({ cmd: 'stop' }).catch(() => {});
      child.stdin.end();
      const r = await exitP;
      clearTimeout(t);
      return r;
    },
  });
}
