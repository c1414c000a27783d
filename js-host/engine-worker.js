// The engine's own thread (a Node worker): the wasm core, the state database
// and the group-commit loop live here, so a long engine call (a 30 MiB input
// chunked and sealed, a restore of thousands of sessions) never stalls the
// thread that serves the Gateway and its tool calls.
//
// The relay link (js-host/sockets.js) and the core's timers live here too,
// as in the browser's worker: a frame from the relay reaches the engine, and
// the engine's frames leave after their commit, without crossing to the
// main thread and back (four thread wakeups fewer per round trip). HTTP
// (registry requests), tool calls, files and jobs stay on the main thread.
//
// Protocol with js-host/engine-thread.js, over one MessagePort:
//   in   {t:'events', events:[...]}   engine events, in order (the start event
//                                     without its state_key: it is added here,
//                                     so the key never crosses threads)
//        {t:'close'}                  close the database and end
//   out  {t:'ready', hasIdentity, memoryBytes} | {t:'failed', error}
//        {t:'commands', cmds, handled, memoryBytes, stats}
//                                     a batch's commands for the main thread,
//                                     after its commit; handled: how many of
//                                     the main thread's events it took
//        {t:'sockets', open}          relay sockets open or opening (an open
//                                     one keeps the process up, as it did on
//                                     the main thread)
//        {t:'io-failure'}             a relay connect that never opened
//        {t:'log', level, message} | {t:'fatal', error} | {t:'closed'}
// Messages waiting on the port are taken together (receiveMessageOnPort), so
// events that arrived during a commit form the next batch.

import { workerData, receiveMessageOnPort } from 'node:worker_threads';
import { loadCore, sharedCoreModules } from './core.js';
import { openRecordsDb } from './state-db.js';
import { loadStateKey } from './storage-fs.js';
import { createJobs } from './jobs.js';
import { createEventLoop, batchTotals, commandTable } from './event-loop.js';
import { loadEngine } from './engine-load.js';
import { randomFillSync } from 'node:crypto';
import { pooledRandom } from './random.js';
import { NodeError, errorText } from './node-error.js';
import { crashHookFromEnv } from './crash-hook.js';
import { warmUp, whenQuiet, WARM_UP_ROUNDS } from './warm-up.js';
import { createSockets, relaySocketClass, wsPackageClass } from './sockets.js';
import { proxySettings } from './proxy.js';
import { createTimers } from './timers.js';

const { port, stateDir, filesDir, sealedOnly, proxy: proxyGiven, stopTimeoutMs } = workerData;

/** Commands carried out on this thread; the rest go to the main thread. */
const HERE = new Set(['socket-open', 'socket-send', 'socket-close', 'timer-set', 'timer-cancel']);

const log = (level, message) => port.postMessage({ t: 'log', level, message: String(message) });
const errorData = (e) => ({ name: e?.name, message: errorText(e), code: e?.code });

// One compiled core for the node's engine and the warm-up's throwaway pair.
const getCoreModule = sharedCoreModules();
const loadCoreShared = (o = {}) => loadCore({ ...o, getCoreModule });

let store;
let loop;
let sockets;
let timers;
let stateKeyB64;
let closed = false;
/** The stop event went to the engine: this thread's sockets and timers no longer reach it. */
let stopTaken = false;
/**
 * Where each event waiting in the loop came from (true: the main thread), in
 * the loop's order: a batch reports to the main thread how many of its
 * events it handled (what keeps the process up while the engine works).
 */
const fromMain = [];
/** The start event's role, once it came (null: a plain node). */
let startRole;
/** When the node's own latest events came (performance.now()): the warm-up waits for a quiet moment. */
let lastEventAt = 0;

async function boot() {
  store = openRecordsDb(stateDir, { sealedOnly, log });
  const records = store;
  const engine = await loadEngine(
    { get: (k) => records.get(k), list: (p) => records.list(p), stateKey: () => loadStateKey(stateDir, { recordCount: records.size }) },
    loadCoreShared,
    log,
    // The OS CSPRNG through OpenSSL, pooled (see pooledRandom).
    { random: pooledRandom(randomFillSync) },
  );
  const { core } = engine;
  stateKeyB64 = engine.takeStateKey();
  // Only file-write is carried out here (durable, in order with the records);
  // every other file and job command goes to the main thread.
  const files = createJobs({ filesDir, dispatch: () => {}, log, stateDir });
  const stats = batchTotals();
  const proxy = proxySettings(proxyGiven); // its warnings were said on the main thread
  sockets = createSockets({
    WebSocketImpl: await relaySocketClass(log),
    ProxyWebSocketImpl: proxy.any ? await wsPackageClass() : undefined,
    proxy,
    dispatch: fromHere,
    log,
    onFailure: () => port.postMessage({ t: 'io-failure' }),
  });
  timers = createTimers(fromHere);
  const runHere = commandTable({
    'socket-open': ([id, url]) => sockets.open(id, url),
    'socket-send': ({ socket, text }) => sockets.send(socket, text),
    'socket-close': ({ socket, code, reason }) => sockets.close(socket, code, reason),
    'timer-set': ([id, atMs]) => timers.set(id, atMs),
    'timer-cancel': timers.cancel,
  }, { log, isDead: () => !!loop?.fatal });
  loop = createEventLoop({
    engine: core.engine,
    takeHostFault: engine.takeHostFault,
    store,
    fileWrite: (rel, bytes) => files.fileWrite(rel, bytes),
    carryOut: (cmds, handled) => {
      // This thread's commands first, in their order: a frame leaves at once.
      let away = cmds;
      if (cmds.some((c) => HERE.has(c?.tag))) {
        away = cmds.filter((c) => !HERE.has(c?.tag));
        runHere(cmds.filter((c) => HERE.has(c?.tag)));
        reportSockets();
      }
      let main = 0;
      for (const m of fromMain.splice(0, handled)) if (m) main++;
      // An idle batch, or one of this thread's events with nothing for the main thread.
      if (!away.length && !main) return;
      port.postMessage({ t: 'commands', cmds: away, handled: main, memoryBytes: core.memoryBytes(), stats: stats.totals });
    },
    onBatch: stats.add,
    log,
    onDeath: (err) => {
      // Nothing more leaves: the main thread ends this thread when it hears.
      sockets.terminateAll();
      timers.clear();
      port.postMessage({ t: 'fatal', error: errorData(err) });
    },
    crashHook: crashHookFromEnv(),
  });
  port.postMessage({ t: 'ready', hasIdentity: store.get('identity') !== undefined, memoryBytes: core.memoryBytes() });
}

/**
 * Once the engine has its start event: a throwaway pair of engines converses
 * in slices, so the node's first messages meet optimized code
 * (js-host/warm-up.js says why). Not for a sandbox: it lives for one
 * offload, and the warm-up's CPU would compete with the transfer it was
 * started for.
 */
let warming = false;
function startWarmUp(role) {
  if (warming) return;
  warming = true; // once per worker, whatever the outcome
  if (closed || loop?.fatal || role === 'sandbox') return;
  const rounds = warmUpRounds();
  if (rounds === 0) {
    log('debug', 'host: engine warm-up off (KARS_MESH_WARM_UP_ROUNDS=0)');
    return;
  }
  const throwaway = (o) => loadCoreShared({ ...o, log: () => {} });
  const stateKey = () => randomFillSync(Buffer.alloc(32)).toString('base64');
  const next = whenQuiet(() => lastEventAt);
  warmUp(throwaway, { rounds, stateKey, next, stopped: () => closed || !!loop?.fatal }).then((r) => {
    if (r.stopped) return; // the node is closing: nothing to say
    if (r.error) log('warn', `host: the engine's warm-up stopped after ${r.rounds} round trips (${r.error}); the node works, its first messages are only slower`);
    else log('debug', `host: engine warm-up: ${r.rounds} round trips, ${r.calls} engine calls, ${r.ms.toFixed(0)} ms`);
  });
}

/** KARS_MESH_WARM_UP_ROUNDS: a whole number (0 turns the warm-up off, for measuring it). */
function warmUpRounds() {
  const v = process.env.KARS_MESH_WARM_UP_ROUNDS;
  if (v === undefined || v === '') return WARM_UP_ROUNDS;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    log('warn', `host: KARS_MESH_WARM_UP_ROUNDS=${JSON.stringify(v)} is not a whole number; using ${WARM_UP_ROUNDS} (set 0 to turn the warm-up off)`);
    return WARM_UP_ROUNDS;
  }
  return n;
}

/**
 * A socket or timer event of this thread. Those of one turn go to the loop
 * together (one batch: frames that came in one read commit once), after the
 * events already waiting.
 */
let hereEvents = [];
function fromHere(ev) {
  if (stopTaken || closed || !loop || loop.fatal) return;
  lastEventAt = performance.now();
  if (!hereEvents.length) queueMicrotask(flushHere);
  hereEvents.push(ev);
}
function flushHere() {
  const events = hereEvents;
  hereEvents = [];
  if (stopTaken || closed || !loop || loop.fatal) return;
  for (let i = 0; i < events.length; i++) fromMain.push(false);
  loop.dispatchAll(events);
  reportSockets();
}

/** How many relay sockets the main thread was last told are open. */
let socketsSaid = 0;
function reportSockets() {
  const n = sockets?.count() ?? 0;
  if (n === socketsSaid) return;
  socketsSaid = n;
  port.postMessage({ t: 'sockets', open: n });
}

function take(msg, events) {
  if (msg.t === 'events') {
    for (const ev of msg.events) {
      if (ev.tag === 'start' && stateKeyB64) {
        const config = JSON.parse(ev.val);
        config.state_key = stateKeyB64;
        stateKeyB64 = undefined; // handed to the core once
        events.push({ tag: 'start', val: JSON.stringify(config) });
        startRole = config.sandbox ? 'sandbox' : config.role ?? null;
      } else {
        events.push(ev);
      }
      fromMain.push(true);
      if (ev.tag === 'stop') stopTaken = true;
    }
    return true;
  }
  return false;
}

async function close() {
  closed = true;
  try {
    loop?.flush();
    store?.close();
  } catch (e) {
    log('warn', `host: closing the state database: ${errorText(e)}`);
  }
  // Sockets the core did not close are closed now; wait (bounded) for the closes.
  timers?.clear();
  const closes = sockets?.closeAll(1000, 'client stopping') ?? [];
  if (closes.length) {
    let t;
    await Promise.race([Promise.all(closes), new Promise((r) => { t = setTimeout(r, stopTimeoutMs); })]);
    clearTimeout(t);
    sockets.terminateAll();
  }
  reportSockets();
  port.postMessage({ t: 'closed' });
  port.close();
}

port.on('message', (first) => {
  lastEventAt = performance.now();
  const events = [];
  let closing = false;
  for (let msg = first; msg; msg = receiveMessageOnPort(port)?.message) {
    if (!take(msg, events) && msg.t === 'close') closing = true;
  }
  if (events.length && loop && !loop.fatal) loop.dispatchAll(events);
  if (startRole !== undefined) startWarmUp(startRole);
  if (closing) close();
});

boot().catch((e) => {
  try { store?.close(); } catch { /* failing anyway */ }
  port.postMessage({ t: 'failed', error: errorData(e) });
  port.close();
});
