// The engine's own thread (a Node worker): the wasm core, the state database
// and the group-commit loop live here, so a long engine call (a 30 MiB input
// chunked and sealed, a restore of thousands of sessions) never stalls the
// thread that serves the Gateway, its sockets and its timers.
//
// Protocol with js-host/engine-thread.js, over one MessagePort:
//   in   {t:'events', events:[...]}   engine events, in order (the start event
//                                     without its state_key: it is added here,
//                                     so the key never crosses threads)
//        {t:'close'}                  close the database and end
//   out  {t:'ready', hasIdentity, memoryBytes} | {t:'failed', error}
//        {t:'commands', cmds, memoryBytes}     a batch's commands, after its commit
//        {t:'log', level, message} | {t:'fatal', error} | {t:'closed'}
// Messages waiting on the port are taken together (receiveMessageOnPort), so
// events that arrived during a commit form the next batch.

import { workerData, receiveMessageOnPort } from 'node:worker_threads';
import { loadCore, sharedCoreModules } from './core.js';
import { openRecordsDb, openMemoryRecordsDb } from './state-db.js';
import { loadStateKey } from './storage-fs.js';
import { createJobs } from './jobs.js';
import { createEventLoop, batchTotals } from './event-loop.js';
import { loadEngine } from './engine-load.js';
import { randomFillSync } from 'node:crypto';
import { pooledRandom } from './random.js';
import { NodeError, errorText } from './node-error.js';
import { crashHookFromEnv } from './crash-hook.js';
import { warmUp, whenQuiet, WARM_UP_ROUNDS } from './warm-up.js';

const { port, stateDir, filesDir, sealedOnly } = workerData;

const log = (level, message) => port.postMessage({ t: 'log', level, message: String(message) });
const errorData = (e) => ({ name: e?.name, message: errorText(e), code: e?.code });

// One compiled core for the node's engine and the warm-up's throwaway pair.
const getCoreModule = sharedCoreModules();
const loadCoreShared = (o = {}) => loadCore({ ...o, getCoreModule });
// The OS CSPRNG through OpenSSL, pooled (see pooledRandom): the node's and the warm-up's.
const random = pooledRandom(randomFillSync);

/**
 * What the core reads its records through. The node and the warm-up's pair
 * use this same code (and the same store code and loadEngine), so the calls
 * V8 learns in the warm-up are the node's own.
 */
const engineStore = (records, stateKey) => ({ get: (k) => records.get(k), list: (p) => records.list(p), stateKey });

let store;
let loop;
let stateKeyB64;
let closed = false;
/** The start event's role, once it came (null: a plain node). */
let startRole;
/** When the node's own latest events came (performance.now()): the warm-up waits for a quiet moment. */
let lastEventAt = 0;

async function boot() {
  store = openRecordsDb(stateDir, { sealedOnly, log });
  const records = store;
  const engine = await loadEngine(
    engineStore(records, () => loadStateKey(stateDir, { recordCount: records.size })),
    loadCoreShared,
    log,
    { random },
  );
  const { core } = engine;
  stateKeyB64 = engine.takeStateKey();
  // Only file-write is carried out here (durable, in order with the records);
  // every other file and job command goes to the main thread.
  const files = createJobs({ filesDir, dispatch: () => {}, log, stateDir });
  const stats = batchTotals();
  loop = createEventLoop({
    engine: core.engine,
    takeHostFault: engine.takeHostFault,
    store,
    fileWrite: (rel, bytes) => files.fileWrite(rel, bytes),
    carryOut: (cmds, handled) => {
      // An idle batch with nothing to carry out: nothing for the main thread.
      if (!cmds.length && !handled) return;
      port.postMessage({ t: 'commands', cmds, handled, memoryBytes: core.memoryBytes(), stats: stats.totals });
    },
    onBatch: stats.add,
    log,
    onDeath: (err) => port.postMessage({ t: 'fatal', error: errorData(err) }),
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
  // Each throwaway engine as the node's own is made: loadEngine on a records
  // store (SQLite, in memory), on the warm-up's clock.
  const quiet = () => {};
  const throwaway = ({ store, now }) =>
    loadEngine(engineStore(store, () => randomFillSync(Buffer.alloc(32))), (o) => loadCoreShared({ ...o, now, log: quiet }), quiet, { random });
  const next = whenQuiet(() => lastEventAt);
  const openStore = () => openMemoryRecordsDb({ sealedOnly });
  warmUp(throwaway, { rounds, next, openStore, stopped: () => closed || !!loop?.fatal }).then((r) => {
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
    }
    return true;
  }
  return false;
}

function close() {
  closed = true;
  try {
    loop?.flush();
    store?.close();
  } catch (e) {
    log('warn', `host: closing the state database: ${errorText(e)}`);
  }
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
