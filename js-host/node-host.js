// Node host for the kars-mesh engine: it carries out what the wasm core asks
// for and decides nothing about the mesh (js-host/ENGINE.md). createNode
// composes the parts:
//   event-loop.js  feeds events to the core one at a time; the stores of each
//                  batch of events commit together before its other commands
//                  are carried out, in order (group commit)
//   engine-thread.js / engine-worker.js  that loop, the core and the state
//                  database in their own thread, so the engine never stalls
//                  this one (a scripted test core runs on this thread)
//   sockets.js     the relay WebSocket
//   http.js        registry requests
//   proxy.js       both through a forward proxy's CONNECT tunnel, when the
//                  environment (or the `proxy` option) names one
//   timers.js      the core's timers
//   tool-calls.js  callTool: tool-call events, settled by tool-result commands
//   state-db.js    sealed records in SQLite; storage-fs.js: lock, state.key;
//                  jobs.js: files and sandbox jobs
//
//   import { createNode } from './node-host.js';
//   const node = await createNode({ stateDir, relayUrl, registryUrl });
//   const result = await node.callTool('mesh_identity', {});
//   await node.stop();

import os from 'node:os';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { loadCore } from './core.js';
import { acquireLock, ensurePrivateDir, loadStateKey, refuseMovedDir, StateDirError } from './storage-fs.js';
import { openRecordsDb, sqliteModule } from './state-db.js';
import { startEngineThread } from './engine-thread.js';
import { crashHookFromEnv } from './crash-hook.js';
import { loadEngine } from './engine-load.js';
import { randomFillSync } from 'node:crypto';
import { pooledRandom } from './random.js';
import { createJobs } from './jobs.js';
import { escapeLog } from './log-escape.js';
import { NodeError, errorText, startRefusal } from './node-error.js';
import { createEventLoop, commandTable, batchTotals } from './event-loop.js';
import { createSockets, relaySocketClass, wsPackageClass } from './sockets.js';
import { createHttp } from './http.js';
import { proxySettings } from './proxy.js';
import { createTimers } from './timers.js';
import { createToolCalls } from './tool-calls.js';

export { NodeError, StateDirError };

const DEFAULT_STOP_TIMEOUT_MS = 1500;
const DEFAULT_START_TIMEOUT_MS = 10_000;

function defaultLog(level, message) {
  if (level === 'warn' || level === 'error') console.error(`[kars-mesh ${level}] ${message}`);
}

/**
 * Start a node on a state directory.
 *
 * @param {object} opts
 * @param {string} opts.stateDir            state directory (created 0700, locked for this process)
 * @param {string} [opts.relayUrl]          relay base URL (http(s)/ws(s); the core derives .../ws)
 * @param {string} [opts.registryUrl]       registry base URL (without /v1)
 * @param {string} [opts.name]              display name
 * @param {string[]} [opts.capabilities]    extra capabilities
 * @param {string[]} [opts.trustedPlaintext] DIDs allowed to send plaintext frames
 * @param {string} [opts.acceptSessions]    session acceptance policy (e.g. "all")
 * @param {string} [opts.relayToken]        the relay's AGENTMESH_RELAY_TOKEN, if it has one
 *        (default: env KARS_MESH_RELAY_TOKEN)
 * @param {string} [opts.relayTokenHint]    what to do when the relay refuses the token (or wants
 *        one), in the host's terms: where this host reads it from (the engine's relay texts)
 * @param {object|string|false} [opts.proxy=process.env] the forward proxy for the relay and the
 *   registry (js-host/proxy.js): an object of environment variables (HTTPS_PROXY, HTTP_PROXY,
 *   ALL_PROXY, NO_PROXY and their lower-case spellings), one proxy URL for everything, or false
 * @param {string} [opts.role]              "controller": keep a pairing ledger and answer pair_request
 * @param {string} [opts.clusterName]       cluster name a controller reports
 * @param {object} [opts.sandbox]           role "sandbox": the offload spec this peer works on
 * @param {{dir:string, exec?:string, execUnisolated?:boolean, hide?:string[], relayUrl?:string, registryUrl?:string, progressMs?:number}} [opts.sandboxes]
 *        controller: where sandbox peers are started (js-host/jobs.js)
 * @param {string} [opts.exec]              sandbox: the operator's command for the task
 * @param {boolean} [opts.execUnisolated]   sandbox: run it without namespace isolation (operator's opt-out)
 * @param {string[]} [opts.execHide]        sandbox: paths hidden from the command (js-host/jobs.js)
 * @param {string} [opts.legacyIdentityFile] the original plugin's ~/.kars/identity.json: imported
 *        (read only) when this state directory has no identity yet, so the DID is kept
 * @param {string} [opts.legacyPairingsFile] the original plugin's ~/.kars/pairings.json: its
 *        pairings are imported once (read only; the core remembers that it looked)
 * @param {string} [opts.identitySeedHex]   KARS_IDENTITY_SEED: deterministic first identity
 * @param {string} [opts.pinnedAppId]       PINNED_AGENT_IDENTITY_APP_ID: deterministic first identity
 * @param {string} [opts.filesDir]          private directory for received files (default <stateDir>/files)
 * @param {(level:string, message:string)=>void} [opts.log] receives the core's log lines
 *        and a few host diagnostics (never secrets, URLs or frames)
 * @param {number} [opts.stopTimeoutMs=1500] how long stop() waits for sockets to close
 * @param {Function} [opts.loadCoreImpl] tests only: replaces core.js's loadCore
 * @param {'worker'|'main'} [opts.engineThread] where the real core runs ('main': on this
 *        thread, as a scripted test core always does; a large offload then stalls it). Default:
 *        KARS_MESH_ENGINE_THREAD, for measuring (bench/placement.mjs), else 'worker'
 * @param {boolean} [opts.sealedRecords] `store` refuses records that are not sealed (always
 *        with the real core; tests with a replacement core may turn it on)
 * @returns {Promise<{ did: string, amid: string|undefined, stateDir: string,
 *   callTool: (tool: string, args?: object, opts?: { signal?: AbortSignal, timeoutMs?: number }) => Promise<object>,
 *   stop: () => Promise<void>, readonly stopped: boolean, readonly ioFailures: number,
 *   closed: Promise<Error|undefined> }>}
 * @throws {StateDirError} state directory unusable (in use by another process, bad state.key,
 *   identity not openable with this key); {NodeError} the core could not be loaded or started
 */
export async function createNode(opts = {}) {
  const o = withDefaults(opts);
  const logger = nodeLogger(o.log);
  // The engine runs in its own thread with the real core; a test's scripted
  // core (a function, which cannot cross threads) runs on this one.
  const inWorker = o.loadCoreImpl === loadCore && (o.engineThread ?? engineThreadFromEnv(process.env.KARS_MESH_ENGINE_THREAD, logger.log)) !== 'main';
  const sealedOnly = o.sealedRecords || o.loadCoreImpl === loadCore;
  if (!o.stateDir || typeof o.stateDir !== 'string') throw new StateDirError('no state directory given');
  sqliteModule(); // names the Node version needed before anything is created
  const root = path.resolve(o.stateDir);
  refuseMovedDir(root); // imported elsewhere by the OpenClaw plugin (state-location.js)
  ensurePrivateDir(root, 'state directory');
  const lock = acquireLock(root); // throws StateDirError (in use, not creatable, ...)
  const filesDir = o.filesDir ?? path.join(root, 'files');
  let jobs;
  let WebSocketImpl;
  let ProxyWebSocketImpl;
  let proxy;
  try {
    proxy = proxySettings(o.proxy);
    jobs = createJobs({
      filesDir,
      dispatch: (ev) => node.dispatch(ev), // jobs report only after start, when the node exists
      log: logger.log,
      // The --exec command of a sandbox must not see this controller's state
      // (nor, through the sandboxes directory, any sandbox's): hidden from it.
      sandboxes: o.sandboxes && {
        relayUrl: o.relayUrl,
        registryUrl: o.registryUrl,
        relayToken: o.relayToken,
        ...o.sandboxes,
        hide: [root, ...(o.sandboxes.hide ?? [])],
      },
      exec: o.exec,
      execUnisolated: o.execUnisolated,
      execHide: o.execHide ?? [],
      stateDir: root,
    });
    WebSocketImpl = await relaySocketClass(logger.log).catch((e) => {
      throw new NodeError(`no WebSocket implementation: install the 'ws' package or use Node 22+ (${errorText(e)})`, { cause: e });
    });
    if (proxy.any) {
      ProxyWebSocketImpl = await wsPackageClass().catch((e) => {
        throw new NodeError(`a proxy is set, and the relay connection through it needs the 'ws' package: ${errorText(e)}`, { cause: e });
      });
      for (const w of proxy.warnings) logger.log('warn', w);
      logger.log('info', `host: relay and registry connections: ${proxy.describe()}`);
    }
  } catch (e) {
    lock.release();
    throw e;
  }
  let node;
  try {
    node = await runNode({
      root, lock, filesDir, sealedOnly, inWorker, loadCoreImpl: o.loadCoreImpl,
      jobs, WebSocketImpl, ProxyWebSocketImpl, proxy, log: logger.log, stopTimeoutMs: o.stopTimeoutMs,
    });
  } catch (e) {
    logger.started(errorText(e)); // what was held, unless the error says it
    throw e;
  }
  const { did, amid } = await start(node, startConfig(o, node.takeStateKey(), node.hasIdentity), logger, root);
  return {
    did,
    amid,
    stateDir: root,
    callTool: node.callTool,
    stop: node.stop,
    /** true once stop() finished or the node died */
    get stopped() {
      return node.stopped;
    },
    /** The engine's linear memory in bytes (as of its last batch in the engine thread). */
    memoryBytes() {
      return node.memoryBytes();
    },
    /**
     * Group-commit totals since start: {batches, commits (batches with stores), events,
     * stores (store + erase), bytes, engineMs, commitMs, maxCallMs (the longest engine
     * call), maxCallSent (the most frame text one engine call sent)} (as of the last batch).
     */
    storeStats() {
      return node.storeStats();
    },
    /** HTTP requests that failed and WebSocket connects that never opened, since start. */
    get ioFailures() {
      return node.ioFailures;
    },
    /** Resolves when the node is stopped: undefined after stop(), the error if it died. */
    closed: node.closed,
  };
}

/**
 * KARS_MESH_ENGINE_THREAD: `main` runs the engine on the thread that serves
 * the Gateway (no warm-up, and a 30 MiB offload stalls that thread for up
 * to 0.2 s: for measuring where the engine runs, bench/placement.mjs);
 * unset, empty or `worker`: its own worker thread. Anything else is named
 * and the worker used.
 */
export function engineThreadFromEnv(value, log) {
  if (value === undefined || value === '' || value === 'worker') return 'worker';
  if (value === 'main') {
    log('info', "host: the engine runs on this thread (KARS_MESH_ENGINE_THREAD=main): a large offload stalls it; unset it for the engine's own thread");
    return 'main';
  }
  log('warn', `host: KARS_MESH_ENGINE_THREAD=${JSON.stringify(value)} is neither main nor worker; the engine runs in its own thread (worker)`);
  return 'worker';
}

/** createNode's options with their defaults. */
function withDefaults({
  relayToken = process.env.KARS_MESH_RELAY_TOKEN,
  // Where the default token comes from; a host that reads it elsewhere, or
  // whose user sets it elsewhere, says so.
  relayTokenHint = "set KARS_MESH_RELAY_TOKEN in this process's environment to the relay's AGENTMESH_RELAY_TOKEN",
  proxy = process.env,
  execUnisolated = false,
  identitySeedHex = process.env.KARS_IDENTITY_SEED,
  pinnedAppId = process.env.PINNED_AGENT_IDENTITY_APP_ID,
  log = defaultLog,
  stopTimeoutMs = DEFAULT_STOP_TIMEOUT_MS,
  // Tests only: a replacement for core.js's loadCore (e.g. a scripted engine).
  loadCoreImpl = loadCore,
  // `store` takes only well-formed sealed records (state-db.js). Always with
  // the real core; a test's replacement core may store what it likes unless
  // the test asks for the check.
  sealedRecords = loadCoreImpl === loadCore,
  ...given
}) {
  return { ...given, relayToken, relayTokenHint, proxy, execUnisolated, identitySeedHex, pinnedAppId, log, stopTimeoutMs, loadCoreImpl, sealedRecords };
}

/**
 * The node's logger: every line escaped, and it never throws. While the node
 * starts, the core's errors are kept: they explain a failed start (e.g. a
 * wrong state key).
 */
function nodeLogger(log) {
  let starting = true;
  const startErrors = [];
  const emit = (level, message) => {
    try {
      // Peer-controlled text inside a message cannot forge lines or drive a terminal.
      log(level, escapeLog(message));
    } catch {
      /* a logger must not break the loop */
    }
  };
  const safeLog = (level, message) => {
    // Held until the start is over: a failed start throws them in its
    // error, and a CLI printed each twice (the line, then the error).
    if (starting && level === 'error') return void startErrors.push(String(message));
    emit(level, message);
  };
  return {
    log: safeLog,
    startErrors,
    /** The start is over; `told`: the text of the error it throws (its lines are in it). */
    started(told = '') {
      if (!starting) return;
      starting = false;
      for (const m of startErrors) if (!told.includes(m)) emit('error', m);
    },
  };
}

/**
 * The engine on this thread: the database opened here, the group-commit loop
 * run synchronously by dispatch.
 */
async function engineHere({ root, sealedOnly, loadCoreImpl, jobs, log, carryOut, onDeath }) {
  const records = openRecordsDb(root, { sealedOnly, log });
  const store = Object.assign(Object.create(records), {
    stateKey: () => loadStateKey(root, { recordCount: records.size }),
  });
  let engine;
  try {
    engine = await loadEngine(store, loadCoreImpl, log, { random: pooledRandom(randomFillSync) });
  } catch (e) {
    records.close();
    throw e;
  }
  const stats = batchTotals();
  const loop = createEventLoop({
    engine: engine.core.engine,
    takeHostFault: engine.takeHostFault,
    onBatch: stats.add,
    store: records,
    fileWrite: (rel, bytes) => jobs.fileWrite(rel, bytes),
    carryOut,
    log,
    onDeath,
    crashHook: crashHookFromEnv(),
  });
  return {
    loop,
    hasIdentity: records.get('identity') !== undefined,
    takeStateKey: engine.takeStateKey,
    memoryBytes: () => (typeof engine.core.memoryBytes === 'function' ? engine.core.memoryBytes() : undefined),
    storeStats: () => ({ ...stats.totals }),
    async close() {
      loop.flush();
      records.close();
    },
    terminate() {
      records.close();
    },
  };
}

/** The engine in its own thread (js-host/engine-thread.js). */
async function engineInWorker({ root, filesDir, sealedOnly, log, carryOut, onDeath }) {
  const thread = await startEngineThread({ stateDir: root, filesDir, sealedOnly, log, carryOut, onDeath });
  return {
    loop: thread.loop,
    hasIdentity: thread.hasIdentity,
    takeStateKey: () => undefined, // the engine's thread adds it to the start event
    memoryBytes: thread.memoryBytes,
    storeStats: thread.storeStats,
    close: thread.close,
    terminate: thread.terminate,
  };
}

/**
 * Wire the event loop to what carries out the core's commands, and keep the
 * node's life: stop() lets the core say goodbye first; death (a trap, a
 * failed durable write) releases everything at once.
 */
async function runNode({ root, lock, filesDir, sealedOnly, inWorker, loadCoreImpl, jobs, WebSocketImpl, ProxyWebSocketImpl, proxy, log, stopTimeoutMs }) {
  let ioFailures = 0;
  const countFailure = () => {
    ioFailures++;
  };
  let resolveClosed;
  const closed = new Promise((r) => (resolveClosed = r));
  let engine = null;
  const dispatch = (ev) => engine?.loop.dispatch(ev);
  const timers = createTimers(dispatch);
  const http = createHttp({ dispatch, onFailure: countFailure, proxy });
  const sockets = createSockets({ WebSocketImpl, dispatch, log, onFailure: countFailure, proxy, ProxyWebSocketImpl });
  const calls = createToolCalls({
    dispatch,
    log,
    refusal: () => engine.loop.fatal ?? (engine.loop.state === 'running' ? null : new NodeError('the kars-mesh node is stopped', { code: 'KARS_MESH_STOPPED' })),
  });
  const die = (err) => engine.loop.die(err);
  const carryOut = commandTable(engineCommands({ jobs, sockets, http, timers, calls, dispatch, log }), {
    log,
    isDead: () => !!engine.loop.fatal,
  });
  let tornDown = false;
  function teardown() {
    if (tornDown) return;
    tornDown = true;
    jobs.stopAll();
    timers.clear();
    http.abortAll();
    sockets.terminateAll();
    try {
      engine?.terminate();
    } catch (e) {
      log('warn', `host: closing the state database: ${errorText(e)}`);
    }
    lock.release();
    engine?.loop.end();
  }
  function onDeath(err) {
    calls.rejectAll(err);
    teardown();
    resolveClosed(err);
  }
  try {
    const side = { root, filesDir, sealedOnly, loadCoreImpl, jobs, log, carryOut, onDeath };
    engine = await (inWorker ? engineInWorker(side) : engineHere(side));
  } catch (e) {
    jobs.stopAll();
    lock.release();
    throw e;
  }

  let stopPromise = null;
  function stop() {
    stopPromise ??= (async () => {
      const loop = engine.loop;
      if (loop.fatal || loop.state === 'stopped') return;
      loop.beginStop();
      // The core says goodbye, settles pending calls and emits its last stores.
      dispatch({ tag: 'stop' });
      // Its batch committed and its commands carried out (the engine's thread
      // answers in order), then the database is closed.
      await allWithin([engine.close()], Math.max(stopTimeoutMs, 5000));
      if (loop.fatal) return;
      calls.rejectAll(new NodeError('the kars-mesh node stopped before answering', { code: 'KARS_MESH_STOPPED' }));
      // Sockets the core did not close are closed now; wait (bounded) for the closes.
      await allWithin([...sockets.closeAll(1000, 'client stopping'), ...http.running()], stopTimeoutMs);
      teardown();
      resolveClosed(undefined);
    })();
    return stopPromise;
  }

  return {
    dispatch,
    die,
    callTool: calls.call,
    stop,
    closed,
    hasIdentity: engine.hasIdentity,
    takeStateKey: engine.takeStateKey,
    memoryBytes: engine.memoryBytes,
    storeStats: engine.storeStats,
    get stopped() {
      return engine.loop.state === 'stopped';
    },
    get ioFailures() {
      return ioFailures;
    },
  };
}

/** Wait for all of `promises`, at most `ms`. */
async function allWithin(promises, ms) {
  if (!promises.length) return;
  let t;
  await Promise.race([Promise.all(promises), new Promise((r) => { t = setTimeout(r, ms); })]);
  clearTimeout(t);
}

/**
 * What carries out each engine command that leaves the engine's thread
 * (js-host/ENGINE.md); `store`, `erase` and `file-write` are carried out by
 * the group-commit loop (event-loop.js) before these.
 */
function engineCommands({ jobs, sockets, http, timers, calls, dispatch, log }) {
  return {
    'socket-open': ([id, url]) => sockets.open(id, url),
    'socket-send': ({ socket, text }) => sockets.send(socket, text),
    'socket-close': ({ socket, code, reason }) => sockets.close(socket, code, reason),
    'http-request': http.request,
    'timer-set': ([id, atMs]) => timers.set(id, atMs),
    'timer-cancel': timers.cancel,
    'tool-result': ({ callId, resultJson }) => calls.settle(callId, resultJson),
    'file-read': jobs.fileRead,
    'file-erase': (rel) => {
      try {
        jobs.fileErase(rel);
      } catch (e) {
        log('warn', `host: ${errorText(e)}`);
      }
    },
    'job-start': (job) => {
      try {
        jobs.jobStart(job);
      } catch (e) {
        log('error', `host: job ${job.id} could not start: ${errorText(e)}`);
        queueMicrotask(() => dispatch({ tag: 'job-exited', val: { id: job.id, code: -1, outputs: [], refused: [], log: errorText(e) } }));
      }
    },
    'job-kill': jobs.jobKill,
  };
}

/** The start event's configuration (js-host/ENGINE.md). */
function startConfig(o, stateKeyB64, hasIdentity) {
  const config = stateKeyB64 ? { state_key: stateKeyB64 } : {};
  if (o.relayUrl != null) config.relay_url = o.relayUrl;
  if (o.registryUrl != null) config.registry_url = o.registryUrl;
  if (o.name != null) config.name = o.name;
  if (o.capabilities != null) config.capabilities = o.capabilities;
  if (o.trustedPlaintext != null) config.trusted_plaintext = o.trustedPlaintext;
  if (o.acceptSessions != null) config.accept_sessions = o.acceptSessions;
  if (o.relayToken) config.relay_token = o.relayToken;
  if (o.relayTokenHint) config.relay_token_hint = o.relayTokenHint;
  if (o.role != null) config.role = o.role;
  if (o.clusterName != null) config.cluster_name = o.clusterName;
  if (o.sandbox != null) config.sandbox = o.sandbox;
  if (o.identitySeedHex) config.identity_seed_hex = o.identitySeedHex;
  if (o.pinnedAppId) config.pinned_app_id = o.pinnedAppId;
  if (o.legacyIdentityFile && !hasIdentity) {
    try {
      const envelope = readFileSync(o.legacyIdentityFile, 'utf8');
      config.legacy_identity = { envelope, hostname: os.hostname(), homedir: os.homedir() };
    } catch {
      /* no file: nothing to import */
    }
  }
  if (o.legacyPairingsFile) {
    try {
      // At most 1 MiB: the original writes a few hundred bytes per cluster.
      const text = readFileSync(o.legacyPairingsFile, 'utf8');
      if (text.length <= 1024 * 1024) config.legacy_pairings = text;
    } catch {
      /* no file: nothing to import */
    }
  }
  return config;
}

/**
 * Feed the start event and wait until the core answers with its identity.
 * A start that fails stops the node (releasing the state directory) and throws.
 */
async function start(node, config, logger, stateDir) {
  node.dispatch({ tag: 'start', val: JSON.stringify(config) });
  // The core has the secrets now; the host keeps no copy it does not need.
  config.state_key = undefined;
  config.legacy_identity = undefined;
  let identity;
  try {
    identity = await node.callTool('mesh_identity', {}, { timeoutMs: DEFAULT_START_TIMEOUT_MS });
  } catch (e) {
    logger.started(errorText(e));
    await node.stop();
    // A state directory problem (a damaged database) stays one: the CLI
    // says it once and exits 3, and a restart would not get past it.
    throw e instanceof NodeError || e?.name === 'StateDirError' ? e : new NodeError(`the kars-mesh core did not start: ${errorText(e)}`, { cause: e });
  }
  const did = identity?.details?.mesh?.did;
  if (typeof did !== 'string' || !did.startsWith('did:')) {
    const r = startRefusal(logger.startErrors, identity);
    logger.started(r.why);
    await node.stop();
    // A setting the engine cannot use (a URL, accept_sessions) is not a
    // problem with the identity or its directory: say which it is.
    throw new StateDirError(
      r.settings
        ? `the kars-mesh node cannot start with these settings: ${r.settingsText}`
        : `the kars-mesh core could not open the identity in ${stateDir}: ${r.why}`,
      { code: 'KARS_MESH_START' },
    );
  }
  logger.started();
  return { did, amid: identity?.details?.mesh?.amid };
}
