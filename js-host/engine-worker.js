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
import { loadCore } from './core.js';
import { openRecordsDb } from './state-db.js';
import { loadStateKey } from './storage-fs.js';
import { createJobs } from './jobs.js';
import { createEventLoop, batchTotals } from './event-loop.js';
import { loadEngine } from './engine-load.js';
import { randomFillSync } from 'node:crypto';
import { pooledRandom } from './random.js';
import { NodeError, errorText } from './node-error.js';
import { crashHookFromEnv } from './crash-hook.js';

const { port, stateDir, filesDir, sealedOnly } = workerData;

const log = (level, message) => port.postMessage({ t: 'log', level, message: String(message) });
const errorData = (e) => ({ name: e?.name, message: errorText(e), code: e?.code });

let store;
let loop;
let stateKeyB64;

async function boot() {
  store = openRecordsDb(stateDir, { sealedOnly, log });
  const records = store;
  const engine = await loadEngine(
    { get: (k) => records.get(k), list: (p) => records.list(p), stateKey: () => loadStateKey(stateDir, { recordCount: records.size }) },
    loadCore,
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
  loop = createEventLoop({
    engine: core.engine,
    takeHostFault: engine.takeHostFault,
    store,
    fileWrite: (rel, bytes) => files.fileWrite(rel, bytes),
    carryOut: (cmds, handled) => port.postMessage({ t: 'commands', cmds, handled, memoryBytes: core.memoryBytes(), stats: stats.totals }),
    onBatch: stats.add,
    log,
    onDeath: (err) => port.postMessage({ t: 'fatal', error: errorData(err) }),
    crashHook: crashHookFromEnv(),
  });
  port.postMessage({ t: 'ready', hasIdentity: store.get('identity') !== undefined, memoryBytes: core.memoryBytes() });
}

function take(msg, events) {
  if (msg.t === 'events') {
    for (const ev of msg.events) {
      if (ev.tag === 'start' && stateKeyB64) {
        const config = JSON.parse(ev.val);
        config.state_key = stateKeyB64;
        stateKeyB64 = undefined; // handed to the core once
        events.push({ tag: 'start', val: JSON.stringify(config) });
      } else {
        events.push(ev);
      }
    }
    return true;
  }
  return false;
}

function close() {
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
  const events = [];
  let closing = false;
  for (let msg = first; msg; msg = receiveMessageOnPort(port)?.message) {
    if (!take(msg, events) && msg.t === 'close') closing = true;
  }
  if (events.length && loop && !loop.fatal) loop.dispatchAll(events);
  if (closing) close();
});

boot().catch((e) => {
  try { store?.close(); } catch { /* failing anyway */ }
  port.postMessage({ t: 'failed', error: errorData(e) });
  port.close();
});
