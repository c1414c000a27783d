// The browser host's node, in a dedicated module Worker: the wasm core, the
// IndexedDB store, the group-commit loop and the I/O the core asks for (the
// relay WebSocket, registry fetches, timers), so the page never stalls on an
// engine call. The counterpart of js-host/node-host.js + engine-worker.js,
// built from the same platform-neutral parts:
//   ../core.js        the transpiled component (fetch + WebAssembly.compileStreaming)
//   ../engine-load.js host imports that never throw; CSPRNG crypto.getRandomValues
//   ../event-loop.js  group commit, with an asynchronous commit (storage-idb.js)
//   ../sockets.js     the relay link with the Worker's WebSocket
//   ../http.js        registry requests with the Worker's fetch
//   ../timers.js, ../tool-calls.js
// What is the browser's own: storage-idb.js, and files: `file-read` reads a
// file the user picked (kept in IndexedDB, so an offload survives a reload),
// `file-write` keeps a received file in IndexedDB with the batch's records.
// Sandboxes (`job-start`) do not run in a browser.
//
// Protocol with browser-host.js (postMessage):
//   in   {t:'start', profile, config, routes}  config: the start event's JSON fields, without state_key;
//                                              routes: [[from, to]] URL prefixes the host's fetches are
//                                              sent through (the registry via the console's own origin)
//        {t:'call', id, tool, args, timeoutMs} a tool call
//        {t:'abort', id}
//        {t:'add-inputs', id, files: [File]}   -> {t:'reply', id, value: [path]}
//        {t:'erase-inputs', id, keep: [path]}  -> {t:'reply', id, value: n}  every picked file but keep
//        {t:'erase-inputs', id, drop: [path]}  -> {t:'reply', id, value: n}  only these
//        {t:'get-file', id, path}              -> {t:'reply', id, value: Blob}
//        {t:'stats', id}                       -> {t:'reply', id, value: {...}}
//        {t:'stop', id}                        -> the core says goodbye; {t:'stopped'}
//   out  {t:'ready', did, amid, identity}  | {t:'failed', error}
//        {t:'result', id, value} | {t:'rejected', id, error} | {t:'reply', id, value?, error?}
//        {t:'link', open, reason?}             the relay link opened or closed
//        {t:'log', level, message} | {t:'fatal', error} | {t:'stopped'}

import { loadCore } from '../core.js';
import { loadEngine } from '../engine-load.js';
import { createEventLoop, commandTable, batchTotals } from '../event-loop.js';
import { createSockets } from '../sockets.js';
import { createHttp } from '../http.js';
import { createTimers } from '../timers.js';
import { createToolCalls } from '../tool-calls.js';
import { NodeError, errorText, startRefusal } from '../node-error.js';
import { escapeLog } from '../log-escape.js';
import { openIdbStore } from './storage-idb.js';

const START_TIMEOUT_MS = 15_000;
/** The most a picked file may be: the engine's own limit (cloud_offload) is lower. */
const PICKED_PREFIX = 'picked/';

const post = (msg, transfer) => self.postMessage(msg, transfer ?? []);
const errorData = (e) => ({ name: e?.name, message: errorText(e), code: e?.code });
const logToPage = (level, message) => post({ t: 'log', level, message: escapeLog(String(message)) });
const log = logToPage;

let node = null;
let booting = null;

/**
 * The registry as the engine knows it (its real URL, the one pairing tokens
 * name) reached through the console server's same-origin forward: the AGT
 * registry sends no CORS headers. Like a proxy in the Node host, this is the
 * host's business; the engine's URLs and texts stay the registry's own.
 */
function router(routes = []) {
  const table = routes.filter((r) => Array.isArray(r) && typeof r[0] === 'string' && typeof r[1] === 'string').map(([from, to]) => [from.replace(/\/+$/, ''), to.replace(/\/+$/, '')]);
  return (url) => {
    for (const [from, to] of table) {
      if (url === from || url.startsWith(`${from}/`) || url.startsWith(`${from}?`)) return to + url.slice(from.length);
    }
    return url;
  };
}

async function boot(profile, config, routes) {
  // While the engine starts, the core's errors are kept: they say why a
  // start failed (a display name that cannot be sent to, a wrong state key).
  let starting = true;
  const startErrors = [];
  const log = (level, message) => {
    if (starting && level === 'error') startErrors.push(String(message));
    logToPage(level, message);
  };
  const store = await openIdbStore(profile, { sealedOnly: true });
  let engine;
  try {
    engine = await loadEngine(store, loadCore, log);
  } catch (e) {
    store.close();
    throw e;
  }
  const stats = batchTotals();
  let loop;
  let ioFailures = 0;
  // The page refreshes its inbox when frames arrived (it asks the engine: the
  // host never reads a frame), once their batch is committed and carried out.
  // What each event waiting in the loop is (a frame, an HTTP answer such as
  // the registration's), in order: carryOut learns how many events its batch
  // handled, and the page is told that it may have news to ask for.
  const kinds = [];
  const dispatch = (ev) => {
    if (loop && loop.state === 'running') kinds.push(ev.tag === 'socket-frame' ? 'frame' : ev.tag.startsWith('http-') ? 'http' : '');
    if (ev.tag === 'socket-opened') post({ t: 'link', open: true });
    else if (ev.tag === 'socket-closed') post({ t: 'link', open: false, code: ev.val.code, reason: ev.val.reason });
    loop?.dispatch(ev);
  };
  const countFailure = () => {
    ioFailures++;
  };
  const timers = createTimers(dispatch);
  const http = createHttp({ dispatch, onFailure: countFailure });
  const sockets = createSockets({ WebSocketImpl: self.WebSocket, dispatch, log, onFailure: countFailure });
  const calls = createToolCalls({
    dispatch,
    log,
    refusal: () => loop.fatal ?? (loop.state === 'running' ? null : new NodeError('the kars-mesh node is stopped', { code: 'KARS_MESH_STOPPED' })),
  });
  const files = browserFiles(store, dispatch, log);
  const route = router(routes);
  const carryOutCommands = commandTable(
    {
      'socket-open': ([id, url]) => sockets.open(id, url),
      'socket-send': ({ socket, text }) => sockets.send(socket, text),
      'socket-close': ({ socket, code, reason }) => sockets.close(socket, code, reason),
      'http-request': (req) => http.request({ ...req, url: route(req.url) }),
      'timer-set': ([id, atMs]) => timers.set(id, atMs),
      'timer-cancel': timers.cancel,
      'tool-result': ({ callId, resultJson }) => calls.settle(callId, resultJson),
      'file-read': files.read,
      'file-erase': files.erase,
      'job-start': (job) => {
        log('warn', `host: job ${job.id}: sandboxes do not run in a browser`);
        queueMicrotask(() => dispatch({ tag: 'job-exited', val: { id: job.id, code: -1, outputs: [], refused: [], log: 'sandboxes do not run in the browser console; run a cluster with `kars-mesh cluster up`' } }));
      },
      'job-kill': () => {},
    },
    { log, isDead: () => !!loop.fatal },
  );
  const carryOut = (cmds, handled) => {
    carryOutCommands(cmds);
    const done = kinds.splice(0, handled);
    const frames = done.includes('frame');
    if (frames || done.includes('http')) post({ t: 'activity', frames });
  };
  let died = null;
  function teardown() {
    timers.clear();
    http.abortAll();
    sockets.terminateAll();
    try { store.close(); } catch { /* closing anyway */ }
    loop.end();
  }
  loop = createEventLoop({
    engine: engine.core.engine,
    takeHostFault: engine.takeHostFault,
    store,
    fileWrite: (rel, bytes) => store.putFile(rel, bytes),
    carryOut,
    onBatch: stats.add,
    log,
    onDeath: (err) => {
      died = err;
      calls.rejectAll(err);
      teardown();
      post({ t: 'fatal', error: errorData(err) });
    },
  });

  const startConfig = { ...config, state_key: engine.takeStateKey() };
  dispatch({ tag: 'start', val: JSON.stringify(startConfig) });
  startConfig.state_key = undefined;
  const identity = await calls.call('mesh_identity', {}, { timeoutMs: START_TIMEOUT_MS });
  starting = false;
  const did = identity?.details?.mesh?.did;
  if (typeof did !== 'string' || !did.startsWith('did:')) {
    // As the Node host says it (node-host.js): a setting the engine cannot
    // use (the display name) is not a problem with the stored identity, and
    // the page lets the user change it (KARS_MESH_SETTINGS).
    const r = startRefusal(startErrors, identity);
    if (r.settings) {
      // KARS_MESH_NAME: the display name alone, which the page can change;
      // any other setting (the relay's URL) is the server's to fix.
      throw new NodeError(`the engine cannot start with these settings: ${r.settingsText}`, { code: r.nameOnly ? 'KARS_MESH_NAME' : 'KARS_MESH_SETTINGS' });
    }
    throw new NodeError(`the kars-mesh core could not open the identity in ${store.name}: ${r.why}`, { code: 'KARS_MESH_START' });
  }

  let stopping = null;
  return {
    did,
    identity,
    calls,
    files,
    store,
    stats: () => ({ ...stats.totals, records: store.size, memoryBytes: engine.core.memoryBytes(), ioFailures }),
    get died() {
      return died;
    },
    stop() {
      stopping ??= (async () => {
        if (loop.fatal || loop.state === 'stopped') return;
        loop.beginStop();
        dispatch({ tag: 'stop' });
        // The stop batch commits (asynchronously) before its commands go out.
        await loop.whenIdle();
        loop.flush();
        await loop.whenIdle();
        calls.rejectAll(new NodeError('the kars-mesh node stopped before answering', { code: 'KARS_MESH_STOPPED' }));
        await Promise.race([Promise.all(sockets.closeAll(1000, 'client stopping')), new Promise((r) => setTimeout(r, 1000))]);
        teardown();
      })();
      return stopping;
    },
  };
}

/**
 * Files in the browser: the ones the user picked (kept in IndexedDB under
 * `picked/<id>/<name>`, so an offload can read them again after a reload, as
 * the Node host reads a path again after a restart) and the ones the core
 * received (`files` store, downloaded from the page).
 */
function browserFiles(store, dispatch, log) {
  return {
    read({ id, path, maxBytes }) {
      (async () => {
        const p = String(path);
        const blob = p.startsWith(PICKED_PREFIX) ? await store.getInput(p) : undefined;
        if (!blob) {
          return { tag: 'file-failed', val: { id, message: 'no such file (in the browser console only files picked with "Add files" can be sent; pick it again)' } };
        }
        if (BigInt(blob.size) > BigInt(maxBytes)) return { tag: 'file-failed', val: { id, message: `too large: ${blob.size}` } };
        const bytes = new Uint8Array(await blob.arrayBuffer());
        return { tag: 'file-loaded', val: { id, bytes } };
      })().then(dispatch, (e) => dispatch({ tag: 'file-failed', val: { id, message: errorText(e) } }));
    },
    erase(rel) {
      store.eraseFiles(rel).catch((e) => log('warn', `host: cannot erase ${rel}: ${errorText(e)}`));
    },
    async addInputs(list) {
      const dir = `${PICKED_PREFIX}${crypto.randomUUID().slice(0, 8)}`;
      const entries = [];
      const names = new Set();
      for (const f of list) {
        let name = String(f.name || 'file').replace(/[/\\]/g, '_');
        // Two picked files of the same name would be one input: a second folder keeps both.
        const folder = names.has(name) ? `${dir}-${entries.length}` : dir;
        names.add(name);
        entries.push([`${folder}/${name}`, f]);
      }
      await store.putInputs(entries);
      return entries.map(([p]) => p);
    },
    async eraseInputs(keep, only) {
      const all = await store.listInputs();
      const drop = only ? all.filter((p) => only.includes(p)) : all.filter((p) => !keep.includes(p));
      if (drop.length) await store.eraseInputs(drop);
      return drop.length;
    },
  };
}

async function reply(id, work) {
  try {
    const value = await work();
    post({ t: 'reply', id, value });
  } catch (e) {
    post({ t: 'reply', id, error: errorData(e) });
  }
}

const aborts = new Map();

self.onmessage = async ({ data: msg }) => {
  switch (msg?.t) {
    case 'start':
      if (booting) return;
      booting = boot(msg.profile, msg.config, msg.routes).then(
        (n) => {
          node = n;
          post({ t: 'ready', did: n.did, identity: n.identity });
        },
        (e) => post({ t: 'failed', error: errorData(e) }),
      );
      return;
    case 'call': {
      if (!node) return post({ t: 'rejected', id: msg.id, error: { message: 'the engine is not running' } });
      const ctl = new AbortController();
      aborts.set(msg.id, ctl);
      node.calls.call(msg.tool, msg.args ?? {}, { signal: ctl.signal, timeoutMs: msg.timeoutMs }).then(
        (value) => post({ t: 'result', id: msg.id, value }),
        (e) => post({ t: 'rejected', id: msg.id, error: errorData(e) }),
      ).finally(() => aborts.delete(msg.id));
      return;
    }
    case 'abort':
      aborts.get(msg.id)?.abort(new DOMException('the page gave up on this call', 'AbortError'));
      return;
    case 'add-inputs':
      return reply(msg.id, () => node.files.addInputs(msg.files));
    case 'erase-inputs':
      return reply(msg.id, () => node.files.eraseInputs(msg.keep ?? [], msg.drop));
    case 'get-file':
      return reply(msg.id, async () => {
        const blob = await node.store.getFile(msg.path);
        if (!blob) throw new Error(`no received file ${msg.path} (already removed?)`);
        return blob;
      });
    case 'list-files':
      return reply(msg.id, () => node.store.listFiles());
    case 'stats':
      return reply(msg.id, () => node?.stats());
    case 'stop':
      await booting?.catch(() => {});
      await node?.stop();
      post({ t: 'stopped' });
      return;
    default:
      log('warn', `host: unknown message from the page: ${JSON.stringify(msg?.t)}`);
  }
};
