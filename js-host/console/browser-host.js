// The page's side of the browser host: one engine per identity across the
// tabs of this origin (Web Locks), the engine's Worker
// (engine-worker-browser.js), and node.callTool as the Node host has it.
//
//   import { openNode } from './browser-host.js';
//   const r = await openNode({ profile: 'default', config, onLink, onActivity, onFatal });
//   if (r.blocked) { ...another tab has this identity...; await r.whenFree; }
//   const node = r.node;
//   const result = await node.callTool('mesh_identity', {});
//
// The lock `kars-mesh:<profile>` is held for as long as this page runs the
// engine; a second tab asks for it with ifAvailable and, refused, starts no
// Worker at all: it says so, and tells the tab that has the identity (a
// BroadcastChannel of the same name) that someone tried. It can then wait for
// the lock: when the first tab closes, the second starts its engine.

const WORKER_URL = new URL('./engine-worker-browser.js', import.meta.url);

export const lockName = (profile) => `kars-mesh:${profile}`;

/** A profile name: what an IndexedDB database and a lock are named after. */
export function checkProfile(profile) {
  if (typeof profile !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(profile)) {
    throw new Error('a profile name is 1 to 64 letters, digits, dots, dashes or underscores');
  }
  return profile;
}

/** Why this browser cannot run the console, or null. */
export function missingFeatures() {
  const missing = [];
  if (!globalThis.isSecureContext) missing.push('a secure context (open the console at http://127.0.0.1:<port>/ or over https)');
  if (!navigator.locks) missing.push('Web Locks (navigator.locks)');
  if (!globalThis.indexedDB) missing.push('IndexedDB (is this a private window that disallows it?)');
  if (!globalThis.WebAssembly) missing.push('WebAssembly');
  if (!globalThis.Worker) missing.push('Web Workers');
  return missing.length ? missing : null;
}

class NodeProxy {
  constructor(worker, { onLink, onActivity, onFatal, onLog }) {
    this.worker = worker;
    this.pending = new Map();
    this.replies = new Map();
    this.nextId = 1;
    this.fatal = null;
    this.linkOpen = false;
    this.onLink = onLink;
    this.onActivity = onActivity;
    this.onFatal = onFatal;
    this.onLog = onLog;
  }

  handle(msg) {
    switch (msg.t) {
      case 'result': {
        const p = this.pending.get(msg.id);
        if (p) {
          this.pending.delete(msg.id);
          p.resolve(msg.value);
        }
        break;
      }
      case 'rejected': {
        const p = this.pending.get(msg.id);
        if (p) {
          this.pending.delete(msg.id);
          p.reject(Object.assign(new Error(msg.error?.message ?? 'failed'), { code: msg.error?.code, name: msg.error?.name ?? 'Error' }));
        }
        break;
      }
      case 'reply': {
        const p = this.replies.get(msg.id);
        if (p) {
          this.replies.delete(msg.id);
          if (msg.error) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
          else p.resolve(msg.value);
        }
        break;
      }
      case 'link':
        this.linkOpen = msg.open;
        this.onLink?.(msg);
        break;
      case 'activity':
        this.onActivity?.(msg);
        break;
      case 'log':
        this.onLog?.(msg.level, msg.message);
        break;
      case 'fatal':
        this.die(Object.assign(new Error(msg.error?.message ?? 'the engine stopped'), { code: msg.error?.code }));
        break;
      case 'stopped':
        this.stoppedResolve?.();
        break;
      default:
        break;
    }
  }

  die(err) {
    if (this.fatal) return;
    this.fatal = err;
    for (const p of [...this.pending.values(), ...this.replies.values()]) p.reject(err);
    this.pending.clear();
    this.replies.clear();
    this.onFatal?.(err);
  }

  /**
   * An engine tool call, as node.callTool in Node: resolves with the result
   * object ({content, details}), error results included; rejects only when no
   * answer can come (aborted, timed out, the engine stopped).
   */
  callTool(tool, args = {}, { signal, timeoutMs } = {}) {
    if (this.fatal) return Promise.reject(this.fatal);
    if (signal?.aborted) return Promise.reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (!this.pending.has(id)) return;
        this.pending.delete(id);
        this.worker.postMessage({ t: 'abort', id });
        reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => signal?.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        resolve: (v) => { done(); resolve(v); },
        reject: (e) => { done(); reject(e); },
      });
      this.worker.postMessage({ t: 'call', id, tool, args, timeoutMs });
    });
  }

  request(t, fields = {}) {
    if (this.fatal) return Promise.reject(this.fatal);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.replies.set(id, { resolve, reject });
      this.worker.postMessage({ t, id, ...fields });
    });
  }

  /** Keep picked files (File objects) for an offload; resolves with the paths to pass as `files`. */
  addInputs(files) {
    return this.request('add-inputs', { files: [...files] });
  }
  /** Forget picked files: every one but `keep` (an array), or only `{drop}`. */
  eraseInputs(which = []) {
    return this.request('erase-inputs', Array.isArray(which) ? { keep: which } : { drop: which.drop });
  }
  /** A received file (offload output) as a Blob. */
  getFile(path) {
    return this.request('get-file', { path });
  }
  /** Every received file: [{path, size}]. */
  listFiles() {
    return this.request('list-files');
  }
  /** Group-commit totals, record count, the core's memory. */
  stats() {
    return this.request('stats');
  }
  /** The core says goodbye (closing the relay link), then the Worker ends. */
  async stop() {
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      if (!this.fatal) {
        const stopped = new Promise((r) => (this.stoppedResolve = r));
        this.worker.postMessage({ t: 'stop' });
        await Promise.race([stopped, new Promise((r) => setTimeout(r, 3000))]);
      }
      this.worker.terminate();
      this.die(Object.assign(new Error('the kars-mesh node is stopped'), { code: 'KARS_MESH_STOPPED' }));
    })();
    return this.stopping;
  }
}

/** Start the engine's Worker and wait until the core has opened the identity. */
async function startWorker(profile, config, routes, handlers) {
  const worker = new Worker(WORKER_URL, { type: 'module', name: `kars-mesh ${profile}` });
  const node = new NodeProxy(worker, handlers);
  const ready = new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => {
      if (data.t === 'ready') {
        node.did = data.did;
        node.identity = data.identity;
        worker.onmessage = ({ data: d }) => node.handle(d);
        resolve(node);
      } else if (data.t === 'failed') {
        worker.terminate();
        reject(Object.assign(new Error(data.error?.message ?? 'the engine did not start'), { code: data.error?.code, name: data.error?.name ?? 'Error' }));
      } else {
        node.handle(data);
      }
    };
    worker.onerror = (ev) => {
      ev.preventDefault?.();
      const err = new Error(`the engine's Worker failed: ${ev.message || 'could not load it (see the browser console)'}`);
      worker.terminate();
      reject(err);
      node.die(err);
    };
  });
  worker.postMessage({ t: 'start', profile, config, routes });
  return ready;
}

/**
 * Open the identity `profile` in this tab.
 * @returns {Promise<{node: NodeProxy} | {blocked: true, whenFree: Promise<{node: NodeProxy}>}>}
 *   blocked: another tab has it; whenFree resolves (with a started node) once it is free.
 */
export async function openNode({ profile, config, routes = [], onLink, onActivity, onFatal, onLog, onOtherTab }) {
  checkProfile(profile);
  const name = lockName(profile);
  const channel = new BroadcastChannel(name);
  const handlers = { onLink, onActivity, onFatal, onLog };

  /** Run the engine under a granted lock, holding it until the node stops or dies. */
  const underLock = (settle) => () =>
    new Promise((releaseLock) => {
      startWorker(profile, config, routes, handlers).then(
        (node) => {
          const stop = node.stop.bind(node);
          node.stop = async () => {
            await stop();
            releaseLock();
          };
          const onFatalOuter = node.onFatal;
          node.onFatal = (err) => {
            releaseLock();
            onFatalOuter?.(err);
          };
          // A tab that finds this identity in use says hello: we are told too.
          channel.onmessage = ({ data }) => {
            if (data?.t === 'hello') onOtherTab?.();
          };
          settle({ node });
        },
        (error) => {
          releaseLock();
          settle({ error });
        },
      );
    });

  const got = await new Promise((resolve) => {
    navigator.locks.request(name, { ifAvailable: true }, (lock) => (lock ? underLock(resolve)() : resolve(null)));
  });
  if (got?.error) throw got.error;
  if (got) return got;

  // Another tab has this identity: no Worker here. Tell that tab, and offer to
  // take over once it closes.
  channel.postMessage({ t: 'hello' });
  const whenFree = new Promise((resolve, reject) => {
    navigator.locks.request(name, underLock((r) => (r.error ? reject(r.error) : resolve(r))));
  });
  return { blocked: true, whenFree };
}
