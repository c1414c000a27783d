// Node host for the kars-mesh engine: a loop that feeds events to the wasm
// core one at a time and carries out the commands of each call in order
// (js-host/ENGINE.md). It decides nothing about the mesh.
//
//   import { createNode } from './node-host.js';
//   const node = await createNode({ stateDir, relayUrl, registryUrl });
//   const result = await node.callTool('mesh_identity', {});
//   await node.stop();
//
// Every event (tool calls, WebSocket callbacks, fetch completions, timer
// fires) goes through `dispatch(event)`. While one `handle()` call's commands
// are being carried out, new events wait in a queue, so the core always sees
// the effects of its commands in the order it issued them.

import { randomBytes, randomUUID } from 'node:crypto';
import { loadCore } from './core.js';
import { openStateDir, StateDirError } from './storage-fs.js';
import { createJobs } from './jobs.js';
import { escapeLog } from './log-escape.js';
import path from 'node:path';
import os from 'node:os';
import { readFileSync } from 'node:fs';

const MAX_TIMEOUT = 2 ** 31 - 1; // setTimeout's limit (~24.8 days)
const DEFAULT_HTTP_TIMEOUT_MS = 30_000;
const MAX_HTTP_BODY = 16 * 1024 * 1024;
const DEFAULT_STOP_TIMEOUT_MS = 1500;
const DEFAULT_START_TIMEOUT_MS = 10_000;

/** An error from the host itself (the node is stopped, the core trapped, a write failed). */
export class NodeError extends Error {
  constructor(message, { cause, code } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'NodeError';
    this.code = code ?? 'KARS_MESH_NODE';
  }
}

export { StateDirError };

function defaultLog(level, message) {
  if (level === 'warn' || level === 'error') console.error(`[kars-mesh ${level}] ${message}`);
}

let wsModulePromise;
/** The WebSocket constructor: the global one (Node 22+), else the `ws` package. */
async function webSocketClass() {
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  wsModulePromise ??= import('ws').then((m) => m.WebSocket ?? m.default);
  return wsModulePromise;
}

function errorText(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  let msg = e.message || String(e);
  const cause = e.cause;
  if (cause && typeof cause === 'object') {
    const detail = cause.code && cause.message && !cause.message.includes(cause.code)
      ? `${cause.code} ${cause.message}`
      : cause.message || cause.code;
    if (detail && !msg.includes(detail)) msg += `: ${detail}`;
  }
  return msg;
}

function utf8Truncate(text, maxBytes) {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= maxBytes) return text;
  return new TextDecoder().decode(buf.subarray(0, maxBytes)).replace(/\uFFFD+$/, '');
}

async function readBodyCapped(res, limit) {
  if (!res.body) return new Uint8Array(0);
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await res.body.cancel().catch(() => {});
    throw new Error(`response body too large (${declared} bytes, limit ${limit})`);
  }
  const chunks = [];
  let total = 0;
  for await (const chunk of res.body) {
    total += chunk.byteLength;
    if (total > limit) throw new Error(`response body too large (over ${limit} bytes)`);
    chunks.push(chunk);
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
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
 * @param {string} [opts.identitySeedHex]   KARS_IDENTITY_SEED: deterministic first identity
 * @param {string} [opts.pinnedAppId]       PINNED_AGENT_IDENTITY_APP_ID: deterministic first identity
 * @param {string} [opts.filesDir]          private directory for received files (default <stateDir>/files)
 * @param {(level:string, message:string)=>void} [opts.log] receives the core's log lines
 *        and a few host diagnostics (never secrets, URLs or frames)
 * @param {number} [opts.stopTimeoutMs=1500] how long stop() waits for sockets to close
 * @param {Function} [opts.loadCoreImpl] tests only: replaces core.js's loadCore
 * @param {boolean} [opts.sealedRecords] `store` refuses records that are not sealed (always
 *        with the real core; tests with a replacement core may turn it on)
 * @returns {Promise<{ did: string, amid: string|undefined, stateDir: string,
 *   callTool: (tool: string, args?: object, opts?: { signal?: AbortSignal, timeoutMs?: number }) => Promise<object>,
 *   stop: () => Promise<void>, readonly stopped: boolean, readonly ioFailures: number,
 *   closed: Promise<Error|undefined> }>}
 * @throws {StateDirError} state directory unusable (in use by another process, bad state.key,
 *   identity not openable with this key); {NodeError} the core could not be loaded or started
 */
export async function createNode({
  stateDir,
  relayUrl,
  registryUrl,
  name,
  capabilities,
  trustedPlaintext,
  acceptSessions,
  relayToken = process.env.KARS_MESH_RELAY_TOKEN,
  role,
  clusterName,
  sandbox,
  sandboxes,
  exec,
  execUnisolated = false,
  execHide,
  filesDir,
  legacyIdentityFile,
  identitySeedHex = process.env.KARS_IDENTITY_SEED,
  pinnedAppId = process.env.PINNED_AGENT_IDENTITY_APP_ID,
  log = defaultLog,
  stopTimeoutMs = DEFAULT_STOP_TIMEOUT_MS,
  // Tests only: a replacement for core.js's loadCore (e.g. a scripted engine).
  loadCoreImpl = loadCore,
  // `store` takes only well-formed sealed records (storage-fs.js). Always with
  // the real core; a test's replacement core may store what it likes unless
  // the test asks for the check.
  sealedRecords = loadCoreImpl === loadCore,
} = {}) {
  // Errors the core logs while starting explain a failed start (e.g. a wrong state key).
  let starting = true;
  const startErrors = [];
  const safeLog = (level, message) => {
    if (starting && level === 'error') startErrors.push(String(message));
    try {
      // Peer-controlled text inside a message cannot forge lines or drive a terminal.
      log(level, escapeLog(message));
    } catch {
      /* a logger must not break the loop */
    }
  };

  /** Set by an import wrapper during handle(): the instance must be treated as dead. */
  let hostFault = null;
  const store = openStateDir(stateDir, { sealedOnly: sealedRecords || loadCoreImpl === loadCore }); // throws StateDirError (in use, not creatable, ...)
  let core;
  let stateKeyB64;
  try {
    const key = store.stateKey();
    stateKeyB64 = Buffer.from(key).toString('base64');
    key.fill(0);
    // Import-side faults: the core's host imports must never throw (a throw
    // aborts the core mid-call). They record the fault instead, and dispatch
    // discards that call's commands and stops the node.
    core = await loadCoreImpl({
      storage: {
        get(key) {
          try {
            return store.get(key);
          } catch (e) {
            hostFault ??= new NodeError(`cannot read stored record ${JSON.stringify(key)}: ${errorText(e)}`, { cause: e });
            return undefined;
          }
        },
        list(prefix) {
          try {
            return store.list(prefix);
          } catch (e) {
            hostFault ??= new NodeError(`cannot list stored records: ${errorText(e)}`, { cause: e });
            return [];
          }
        },
      },
      random: (len) => {
        try {
          return randomBytes(len);
        } catch (e) {
          hostFault ??= new NodeError(`CSPRNG failed: ${errorText(e)}`, { cause: e });
          return new Uint8Array(Number.isSafeInteger(len) && len > 0 ? len : 0); // discarded: the call's commands are dropped
        }
      },
      now: Date.now,
      log: safeLog,
    });
  } catch (e) {
    store.close();
    if (e instanceof StateDirError) throw e;
    throw new NodeError(`cannot load the kars-mesh core: ${errorText(e)}`, { cause: e, code: 'KARS_MESH_CORE_LOAD' });
  }

  /** 'running' | 'stopping' | 'stopped' */
  let state = 'running';
  /** Why the node died (trap, failed write), if it did. */
  let fatal = null;
  let ioFailures = 0;
  let resolveClosed;
  const closed = new Promise((r) => (resolveClosed = r));

  const queue = [];
  let draining = false;
  /** callId -> { resolve, reject, cleanup } */
  const pending = new Map();
  /** socket id -> { ws, opened, closing, lastError, reported, closedPromise, resolveClosed } */
  const sockets = new Map();
  /** timer id (bigint) -> timeout handle */
  const timers = new Map();
  /** in-flight HTTP requests (promises settling after their event is dispatched) */
  const inflight = new Set();
  const hostAbort = new AbortController();
  let keepAlive = null;
  const jobs = createJobs({
    filesDir: filesDir ?? path.join(store.dir, 'files'),
    dispatch: (ev) => dispatch(ev),
    log: safeLog,
    // The --exec command of a sandbox must not see this controller's state
    // (nor, through the sandboxes directory, any sandbox's): hidden from it.
    sandboxes: sandboxes && { relayUrl, registryUrl, relayToken, ...sandboxes, hide: [store.dir, ...(sandboxes.hide ?? [])] },
    exec,
    execUnisolated,
    execHide: execHide ?? [],
    stateDir: store.dir,
  });

  // ---- the loop -----------------------------------------------------------

  function dispatch(event) {
    if (state !== 'running' && event.tag !== 'stop') {
      return; // after `stop` the core hears nothing more
    }
    queue.push(event);
    if (draining) return; // the running drain picks it up, in order
    draining = true;
    try {
      while (queue.length && !fatal) {
        const ev = queue.shift();
        let commands;
        hostFault = null;
        try {
          commands = core.engine.handle(ev);
        } catch (e) {
          die(new NodeError(`the kars-mesh core failed (${errorText(e)}); this node is stopped, restart it`, {
            cause: e,
            code: e?.code === 'KARS_MESH_CORE_MEMORY' ? e.code : 'KARS_MESH_CORE_TRAP',
          }));
          break;
        }
        if (hostFault) {
          die(new NodeError(`${hostFault.message}; this node is stopped, restart it`, { cause: hostFault, code: 'KARS_MESH_HOST_FAULT' }));
          break;
        }
        for (const cmd of commands) {
          perform(cmd);
          if (fatal) break;
        }
      }
    } finally {
      draining = false;
      if (fatal) queue.length = 0;
    }
  }

  function perform(cmd) {
    switch (cmd.tag) {
      case 'store': {
        const [key, bytes] = cmd.val;
        try {
          store.set(key, bytes);
        } catch (e) {
          die(new NodeError(`cannot persist state record ${JSON.stringify(key)}: ${errorText(e)}; this node is stopped`, { cause: e, code: 'KARS_MESH_STORE' }));
        }
        return;
      }
      case 'erase': {
        const key = cmd.val;
        try {
          store.delete(key);
        } catch (e) {
          die(new NodeError(`cannot erase state record ${JSON.stringify(key)}: ${errorText(e)}; this node is stopped`, { cause: e, code: 'KARS_MESH_STORE' }));
        }
        return;
      }
      case 'socket-open':
        return socketOpen(cmd.val[0], cmd.val[1]);
      case 'socket-send':
        return socketSend(cmd.val.socket, cmd.val.text);
      case 'socket-close':
        return socketClose(cmd.val.socket, cmd.val.code, cmd.val.reason);
      case 'http-request':
        return httpRequest(cmd.val);
      case 'timer-set':
        return timerSet(cmd.val[0], cmd.val[1]);
      case 'timer-cancel':
        return timerCancel(cmd.val);
      case 'tool-result':
        return toolResult(cmd.val.callId, cmd.val.resultJson);
      case 'file-read':
        return jobs.fileRead(cmd.val);
      case 'file-write': {
        const [rel, bytes] = cmd.val;
        try {
          jobs.fileWrite(rel, bytes);
        } catch (e) {
          die(new NodeError(`cannot write received file ${JSON.stringify(rel)}: ${errorText(e)}; this node is stopped`, { cause: e, code: 'KARS_MESH_STORE' }));
        }
        return;
      }
      case 'file-erase':
        try {
          jobs.fileErase(cmd.val);
        } catch (e) {
          safeLog('warn', `host: ${errorText(e)}`);
        }
        return;
      case 'job-start':
        try {
          return jobs.jobStart(cmd.val);
        } catch (e) {
          safeLog('error', `host: job ${cmd.val.id} could not start: ${errorText(e)}`);
          queueMicrotask(() => dispatch({ tag: 'job-exited', val: { id: cmd.val.id, code: -1, outputs: [], log: errorText(e) } }));
          return;
        }
      case 'job-kill':
        return jobs.jobKill(cmd.val);
      default:
        safeLog('warn', `host: ignoring unknown engine command ${JSON.stringify(cmd?.tag)}`);
    }
  }

  // ---- sockets ------------------------------------------------------------

  let WebSocketImpl = null;

  function reportClosed(id, entry, code, reason) {
    if (entry.reported) return;
    entry.reported = true;
    if (sockets.get(id) === entry) sockets.delete(id);
    entry.resolveClosed();
    if (entry.replaced) return;
    dispatch({ tag: 'socket-closed', val: { socket: id, code, reason } });
  }

  function socketOpen(id, url) {
    const old = sockets.get(id);
    if (old) {
      // Not expected from the core; the old socket's close must not be reported under the reused id.
      safeLog('warn', `host: socket ${id} opened again while open; closing the old one`);
      old.replaced = true;
      try { old.ws?.close(); } catch { /* ignore */ }
      sockets.delete(id);
    }
    const entry = { ws: null, opened: false, closing: false, lastError: null, reported: false, replaced: false };
    entry.closedPromise = new Promise((r) => (entry.resolveClosed = r));
    sockets.set(id, entry);
    let ws;
    try {
      // The `ws` package has no connect timeout by default; the global WebSocket takes none.
      ws = WebSocketImpl === globalThis.WebSocket ? new WebSocketImpl(url) : new WebSocketImpl(url, { handshakeTimeout: 30_000 });
    } catch (e) {
      ioFailures++;
      // Reported through the queue: the core sees it after the current commands.
      reportClosed(id, entry, 1006, errorText(e));
      return;
    }
    entry.ws = ws;
    try { ws.binaryType = 'arraybuffer'; } catch { /* ignore */ }
    ws.addEventListener('open', () => {
      if (entry.reported || entry.replaced) return;
      entry.opened = true;
      dispatch({ tag: 'socket-opened', val: id });
    });
    ws.addEventListener('message', (ev) => {
      if (entry.reported || entry.replaced) return;
      let text = ev.data;
      if (typeof text !== 'string') {
        // The relay sends text only; be tolerant of a binary frame holding UTF-8.
        try {
          text = new TextDecoder().decode(text instanceof ArrayBuffer ? new Uint8Array(text) : text);
        } catch {
          safeLog('debug', `host: socket ${id}: dropped a non-text frame`);
          return;
        }
      }
      dispatch({ tag: 'socket-frame', val: { socket: id, text } });
    });
    ws.addEventListener('error', (ev) => {
      entry.lastError = ev?.error?.message || ev?.message || 'WebSocket error';
      if (entry.reported || entry.replaced) return;
      if (!entry.opened) {
        // A failed connect. Some WebSocket implementations (Node 20's
        // experimental global one) never follow up with a close event.
        if (!entry.closing) ioFailures++; // not when the core itself gave up
        reportClosed(id, entry, 1006, entry.lastError);
        forceClose(entry);
      } else {
        // Expect a close event (1006); report it ourselves if none comes.
        setTimeout(() => {
          if (entry.reported) return;
          reportClosed(id, entry, 1006, entry.lastError);
          forceClose(entry);
        }, 1000).unref?.();
      }
    });
    ws.addEventListener('close', (ev) => {
      if (entry.reported) return;
      let code = Number(ev?.code) || 1006;
      let reason = typeof ev?.reason === 'string' ? ev.reason : '';
      if (!entry.opened) {
        if (!entry.closing) ioFailures++;
        code = 1006;
        if (!reason) reason = entry.lastError || 'connection failed';
      } else if (!reason && code === 1006 && entry.lastError) {
        reason = entry.lastError;
      }
      reportClosed(id, entry, code, reason);
    });
  }

  function socketSend(id, text) {
    const entry = sockets.get(id);
    if (!entry?.ws || !entry.opened || entry.closing) {
      safeLog('debug', `host: socket ${id} is not open; frame dropped (the core gets socket-closed)`);
      return;
    }
    try {
      entry.ws.send(text);
    } catch (e) {
      safeLog('debug', `host: socket ${id}: send failed: ${errorText(e)}`);
    }
  }

  function socketClose(id, code, reason) {
    const entry = sockets.get(id);
    if (!entry) return; // already closed and reported
    closeEntry(entry, code, reason);
  }

  function closeEntry(entry, code, reason) {
    if (entry.closing || !entry.ws) return;
    entry.closing = true;
    const r = utf8Truncate(reason ?? '', 123);
    try {
      // The WHATWG API takes only 1000 and 3000-4999; `ws` also takes 1001 etc.
      try {
        entry.ws.close(code, r);
      } catch {
        entry.ws.close(1000, r);
      }
    } catch {
      try { entry.ws.close(); } catch { /* ignore */ }
    }
  }

  function forceClose(entry) {
    try {
      if (typeof entry.ws?.terminate === 'function') entry.ws.terminate();
      else entry.ws?.close();
    } catch { /* ignore */ }
  }

  // ---- HTTP ---------------------------------------------------------------

  function httpRequest({ id, method, url, headers, body, timeoutMs }) {
    const ms = timeoutMs > 0 ? Math.min(timeoutMs, MAX_TIMEOUT) : DEFAULT_HTTP_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(ms);
    const signal = typeof AbortSignal.any === 'function' ? AbortSignal.any([timeout, hostAbort.signal]) : timeout;
    const request = (async () => {
      const h = new Headers();
      for (const [k, v] of headers ?? []) h.append(k, v);
      const init = { method, headers: h, signal, redirect: 'manual' };
      if (body != null && method !== 'GET' && method !== 'HEAD') init.body = body;
      const res = await fetch(url, init);
      const bytes = await readBodyCapped(res, MAX_HTTP_BODY);
      return { tag: 'http-response', val: { id, status: res.status, body: bytes } };
    })().then(
      (event) => event,
      (e) => {
        const message = timeout.aborted
          ? `request timed out after ${ms} ms`
          : hostAbort.signal.aborted ? 'host stopped' : errorText(e);
        return { tag: 'http-failed', val: { id, message } };
      },
    ).then((event) => {
      inflight.delete(request);
      if (event.tag === 'http-failed') ioFailures++;
      dispatch(event);
    });
    inflight.add(request);
  }

  // ---- timers -------------------------------------------------------------

  function timerSet(id, atMs) {
    timerCancel(id);
    const at = Number(atMs);
    const arm = () => {
      const delay = Math.min(Math.max(at - Date.now(), 0), MAX_TIMEOUT);
      const handle = setTimeout(() => {
        if (timers.get(id) !== handle) return;
        if (Date.now() < at) return arm(); // long timer, or clock moved: wait the rest
        timers.delete(id);
        dispatch({ tag: 'timer-fired', val: id });
      }, delay);
      handle.unref?.();
      timers.set(id, handle);
    };
    arm();
  }

  function timerCancel(id) {
    const handle = timers.get(id);
    if (handle !== undefined) {
      clearTimeout(handle);
      timers.delete(id);
    }
  }

  // ---- tool calls ---------------------------------------------------------

  function updateKeepAlive() {
    // Timers are unref'd so a CLI can exit; a pending tool call keeps the process up.
    if (pending.size > 0 && !keepAlive) keepAlive = setInterval(() => {}, 1 << 30);
    else if (pending.size === 0 && keepAlive) {
      clearInterval(keepAlive);
      keepAlive = null;
    }
  }

  function toolResult(callId, resultJson) {
    const p = pending.get(callId);
    if (!p) {
      safeLog('debug', 'host: tool result for a call nobody waits for (aborted or timed out)');
      return;
    }
    pending.delete(callId);
    p.cleanup();
    updateKeepAlive();
    let value;
    try {
      value = JSON.parse(resultJson);
    } catch (e) {
      p.reject(new NodeError(`the core returned a tool result that is not JSON: ${errorText(e)}`, { cause: e }));
      return;
    }
    p.resolve(value);
  }

  function rejectAll(err) {
    for (const [callId, p] of pending) {
      pending.delete(callId);
      p.cleanup();
      p.reject(err);
    }
    updateKeepAlive();
  }

  /**
   * Invoke an engine tool. Resolves with the parsed result object
   * (`{content:[{type:"text",text}], details:{mesh:{...}}}`), including error
   * results (text starting with ❌); rejects only when the host cannot get an
   * answer: aborted, timed out, node stopped or dead.
   */
  function callTool(tool, args = {}, { signal, timeoutMs } = {}) {
    if (fatal) return Promise.reject(fatal);
    if (state !== 'running') return Promise.reject(new NodeError('the kars-mesh node is stopped', { code: 'KARS_MESH_STOPPED' }));
    if (typeof tool !== 'string' || !tool) return Promise.reject(new TypeError('tool must be a non-empty string'));
    if (signal?.aborted) return Promise.reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    let argsJson;
    try {
      argsJson = JSON.stringify(args ?? {});
    } catch (e) {
      return Promise.reject(new TypeError(`tool arguments are not JSON-serialisable: ${errorText(e)}`));
    }
    const callId = randomUUID();
    return new Promise((resolve, reject) => {
      let timer = null;
      const giveUp = (err) => {
        if (!pending.has(callId)) return;
        pending.delete(callId);
        cleanup();
        updateKeepAlive();
        reject(err);
        dispatch({ tag: 'tool-abort', val: callId });
      };
      const onAbort = () => giveUp(signal.reason ?? new DOMException('aborted', 'AbortError'));
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      pending.set(callId, { resolve, reject, cleanup });
      updateKeepAlive();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs > 0) {
        timer = setTimeout(
          () => giveUp(new NodeError(`${tool} did not answer within ${timeoutMs} ms`, { code: 'KARS_MESH_TIMEOUT' })),
          Math.min(timeoutMs, MAX_TIMEOUT),
        );
      }
      dispatch({ tag: 'tool-call', val: { callId, tool, argsJson } });
    });
  }

  // ---- shutdown -----------------------------------------------------------

  function teardown() {
    jobs.stopAll();
    for (const handle of timers.values()) clearTimeout(handle);
    timers.clear();
    hostAbort.abort();
    inflight.clear();
    for (const entry of sockets.values()) forceClose(entry);
    sockets.clear();
    if (keepAlive) {
      clearInterval(keepAlive);
      keepAlive = null;
    }
    store.close();
    state = 'stopped';
  }

  /** The core trapped or a durable write failed: nothing more may reach the core. */
  function die(err) {
    if (fatal) return;
    fatal = err;
    safeLog('error', err.message);
    queue.length = 0;
    rejectAll(err);
    teardown();
    resolveClosed(err);
  }

  let stopPromise = null;
  function stop() {
    stopPromise ??= (async () => {
      if (fatal || state === 'stopped') return;
      state = 'stopping';
      // The core says goodbye, settles pending calls and emits its last stores.
      dispatch({ tag: 'stop' });
      if (fatal) return;
      rejectAll(new NodeError('the kars-mesh node stopped before answering', { code: 'KARS_MESH_STOPPED' }));
      // Sockets the core did not close are closed now; wait (bounded) for the closes.
      const waits = [];
      for (const entry of sockets.values()) {
        if (!entry.ws || entry.reported) continue;
        closeEntry(entry, 1000, 'client stopping');
        waits.push(entry.closedPromise);
      }
      waits.push(...inflight);
      if (waits.length) {
        let t;
        await Promise.race([
          Promise.all(waits),
          new Promise((r) => { t = setTimeout(r, stopTimeoutMs); }),
        ]);
        clearTimeout(t);
      }
      teardown();
      resolveClosed(undefined);
    })();
    return stopPromise;
  }

  // ---- start --------------------------------------------------------------

  try {
    WebSocketImpl = await webSocketClass();
  } catch (e) {
    store.close();
    throw new NodeError(`no WebSocket implementation: install the 'ws' package or use Node 22+ (${errorText(e)})`, { cause: e });
  }

  const config = { state_key: stateKeyB64 };
  stateKeyB64 = undefined;
  if (relayUrl != null) config.relay_url = relayUrl;
  if (registryUrl != null) config.registry_url = registryUrl;
  if (name != null) config.name = name;
  if (capabilities != null) config.capabilities = capabilities;
  if (trustedPlaintext != null) config.trusted_plaintext = trustedPlaintext;
  if (acceptSessions != null) config.accept_sessions = acceptSessions;
  if (relayToken) config.relay_token = relayToken;
  if (role != null) config.role = role;
  if (clusterName != null) config.cluster_name = clusterName;
  if (sandbox != null) config.sandbox = sandbox;
  if (identitySeedHex) config.identity_seed_hex = identitySeedHex;
  if (pinnedAppId) config.pinned_app_id = pinnedAppId;
  if (legacyIdentityFile && !store.get('identity')) {
    try {
      const envelope = readFileSync(legacyIdentityFile, 'utf8');
      config.legacy_identity = { envelope, hostname: os.hostname(), homedir: os.homedir() };
    } catch {
      /* no file: nothing to import */
    }
  }

  dispatch({ tag: 'start', val: JSON.stringify(config) });
  config.state_key = undefined;
  config.legacy_identity = undefined;

  let identity;
  try {
    identity = await callTool('mesh_identity', {}, { timeoutMs: DEFAULT_START_TIMEOUT_MS });
  } catch (e) {
    starting = false;
    await stop();
    throw e instanceof NodeError ? e : new NodeError(`the kars-mesh core did not start: ${errorText(e)}`, { cause: e });
  }
  starting = false;
  const did = identity?.details?.mesh?.did;
  if (typeof did !== 'string' || !did.startsWith('did:')) {
    await stop();
    const why = startErrors.length ? startErrors.join('; ') : identity?.content?.[0]?.text ?? 'no DID';
    throw new StateDirError(`the kars-mesh core could not open the identity in ${store.dir}: ${why}`, { code: 'KARS_MESH_START' });
  }

  return {
    did,
    amid: identity?.details?.mesh?.amid,
    stateDir: store.dir,
    callTool,
    stop,
    /** true once stop() finished or the node died */
    get stopped() {
      return state === 'stopped';
    },
    /** The engine's linear memory in bytes now (undefined for a core without memoryBytes). */
    memoryBytes() {
      return typeof core.memoryBytes === 'function' ? core.memoryBytes() : undefined;
    },
    /** HTTP requests that failed and WebSocket connects that never opened, since start. */
    get ioFailures() {
      return ioFailures;
    },
    /** Resolves when the node is stopped: undefined after stop(), the error if it died. */
    closed,
  };
}
