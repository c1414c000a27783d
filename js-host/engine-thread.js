// The main thread's side of js-host/engine-worker.js: events go to the engine's
// worker, the commands of each committed batch come back and are carried out
// here (sockets, HTTP, timers, tool results, jobs). The same interface as
// event-loop.js's createEventLoop, so node-host.js runs either.

import { Worker, MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { NodeError } from './node-error.js';
import { StateDirError } from './storage-fs.js';

const WORKER_URL = new URL('./engine-worker.js', import.meta.url);

/**
 * Large byte arrays that events own alone (a file the user named, an HTTP
 * body): moved to the engine's thread instead of copied, so a 30 MiB input
 * costs this thread no copy. Only a view over its whole buffer is moved (a
 * Buffer from Node's shared pool is not).
 */
function movable(events) {
  const out = [];
  for (const ev of events) {
    const bytes = ev.tag === 'file-loaded' ? ev.val?.bytes : ev.tag === 'http-response' ? ev.val?.body : undefined;
    if (bytes instanceof Uint8Array && bytes.byteLength >= 64 * 1024 && bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.byteLength && !out.includes(bytes.buffer)) {
      out.push(bytes.buffer);
    }
  }
  return out;
}

function rebuild(error) {
  if (error?.name === 'StateDirError') return new StateDirError(error.message, { code: error.code });
  return new NodeError(error?.message ?? 'the engine thread failed', { code: error?.code ?? 'KARS_MESH_CORE_TRAP' });
}

/**
 * Start the engine's worker on a state directory (whose lock the caller holds).
 * Resolves once the database is open and the core is loaded.
 * @returns {Promise<{ hasIdentity: boolean, loop: object, memoryBytes: () => number, close: () => Promise<void>, terminate: () => void }>}
 */
export async function startEngineThread({ stateDir, filesDir, sealedOnly, log, carryOut, onDeath }) {
  const { port1: port, port2 } = new MessageChannel();
  const worker = new Worker(WORKER_URL, {
    workerData: { port: port2, stateDir, filesDir, sealedOnly },
    transferList: [port2],
    // The core's own limits apply (1 GiB, js-host/core.js); the worker needs no extra heap.
    stdout: false,
    stderr: false,
  });
  let memoryBytes = 0;
  let stats = null;
  let state = 'starting'; // 'starting' | 'running' | 'stopping' | 'stopped'
  let fatal = null;
  let outgoing = [];
  let closedResolve;
  /** The worker said it closed the database: its exit is the expected end. */
  let closedByUs = false;
  const closed = new Promise((r) => (closedResolve = r));
  let readyResolve;
  let readyReject;
  const ready = new Promise((res, rej) => {
    readyResolve = res;
    readyReject = rej;
  });

  /** `logged`: the worker's own loop has logged it already (its 'fatal'). */
  function die(err, { logged = false } = {}) {
    if (fatal) return;
    fatal = err;
    outgoing = [];
    if (!logged) log('error', err.message);
    closedResolve();
    worker.terminate().catch(() => {});
    onDeath(err);
  }

  function onMessage(msg) {
    switch (msg.t) {
      case 'log':
        log(msg.level, msg.message);
        break;
      case 'ready':
        memoryBytes = msg.memoryBytes;
        state = 'running';
        readyResolve(msg);
        break;
      case 'failed':
        readyReject(rebuild(msg.error));
        closedResolve();
        break;
      case 'commands':
        memoryBytes = msg.memoryBytes;
        stats = msg.stats;
        inFlight -= msg.handled;
        holdProcess();
        if (!fatal && msg.cmds.length) carryOut(msg.cmds);
        break;
      case 'fatal':
        die(rebuild(msg.error), { logged: true });
        break;
      case 'closed':
        closedByUs = true;
        closedResolve();
        break;
      default:
        log('warn', `host: unknown message from the engine thread: ${JSON.stringify(msg.t)}`);
    }
  }
  port.on('message', onMessage);
  worker.on('error', (e) => {
    const err = new NodeError(`the engine thread failed (${e?.message ?? e}); this node is stopped, restart it`, { cause: e, code: 'KARS_MESH_CORE_TRAP' });
    if (state === 'starting') readyReject(err);
    else die(err);
  });
  worker.on('exit', (code) => {
    // The worker's last messages (its final commands, 'closed') may still
    // wait on the port when its exit is reported: the two travel apart.
    // Taken first, a clean close is not mistaken for a death.
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) onMessage(m.message);
    closedResolve();
    // Asked to close, it ended cleanly: its `closed` message and this event
    // come by different ways, in either order (a CLI used to print "ended
    // unexpectedly" after a stop that went as planned).
    const asked = closing && code === 0;
    if (state === 'starting') readyReject(new NodeError(`the engine thread exited while starting (code ${code})`, { code: 'KARS_MESH_CORE_LOAD' }));
    else if (!closedByUs && !asked && state !== 'stopped' && !fatal) die(new NodeError(`the engine thread ended unexpectedly (code ${code}); this node is stopped, restart it`, { code: 'KARS_MESH_CORE_TRAP' }));
  });
  // The process stays up while the engine has work it was given (events in
  // flight, a close), as it did when the engine ran on this thread; an idle
  // engine does not keep it up (a CLI exits when its work is done, pending
  // tool calls and open sockets keep it up).
  let inFlight = 0;
  let closing = false;
  let held = true;
  function holdProcess() {
    const want = !fatal && (inFlight > 0 || closing);
    if (want === held) return;
    held = want;
    if (want) {
      worker.ref();
      port.ref();
    } else {
      worker.unref();
      port.unref();
    }
  }

  const { hasIdentity } = await ready;
  holdProcess();

  // Events of one turn go over together (one message), in order.
  function flush() {
    const events = outgoing;
    outgoing = [];
    if (!events.length || fatal) return;
    inFlight += events.length;
    holdProcess();
    port.postMessage({ t: 'events', events }, movable(events));
  }

  const loop = {
    dispatch(event) {
      if (fatal || (state !== 'running' && event.tag !== 'stop') || state === 'stopped') return;
      if (!outgoing.length) queueMicrotask(flush);
      outgoing.push(event);
    },
    die,
    get fatal() {
      return fatal;
    },
    get state() {
      return state === 'starting' ? 'running' : state;
    },
    beginStop() {
      if (state === 'running') state = 'stopping';
    },
    end() {
      state = 'stopped';
    },
  };

  return {
    hasIdentity,
    loop,
    memoryBytes: () => memoryBytes,
    storeStats: () => (stats ? { ...stats } : undefined),
    /** Everything sent so far is handled and its commands carried out; the database is closed. */
    async close() {
      if (!fatal) {
        flush();
        closing = true;
        holdProcess();
        port.postMessage({ t: 'close' });
      }
      await closed;
      closing = false;
      holdProcess();
    },
    terminate() {
      state = 'stopped';
      worker.terminate().catch(() => {});
    },
  };
}
