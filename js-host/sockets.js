// The engine's WebSockets (the relay link). `socket-open [id, url]` opens
// one under the id the engine chose; the engine then hears `socket-opened`,
// each text frame as `socket-frame`, and exactly one `socket-closed` (a
// failed connect too: code 1006 with the error as reason). `socket-send` to
// a socket that is gone is dropped: the engine gets (or got) socket-closed.
// A URL the proxy settings send through a proxy is opened with the `ws`
// package over the proxy's CONNECT tunnel (js-host/proxy.js); a refused or
// unreachable proxy is the failed connect's reason. In Node every relay link
// is a `ws` package socket that does not offer permessage-deflate (see
// relaySocketClass). Nothing here needs Node: the browser host
// (js-host/console/engine-worker-browser.js) opens the relay link with it and
// the page's own WebSocket; proxy.js (node:net, node:tls) is loaded only when
// a proxy is set, which only the Node host does.

import { errorText } from './node-error.js';

/** proxy.js, loaded the first time a proxy is used (it needs Node). */
const proxyModule = () => import('./proxy.js');

let wsModulePromise;
/** The WebSocket constructor: the global one (Node 22+), else the `ws` package. */
export async function webSocketClass() {
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  wsModulePromise ??= import('ws').then((m) => m.WebSocket ?? m.default);
  return wsModulePromise;
}

/**
 * The relay link's WebSocket in Node: the `ws` package (opened with
 * WS_OPTIONS), else the global one. Not the global one first: Node's
 * WebSocket (undici) always offers permessage-deflate, and the AgentMesh
 * relay (uvicorn) accepts it, so the relay deflated every frame it sent us
 * and we inflated it. Our frames are base64 of ciphertext: deflate saves a
 * quarter of the bytes at a cost of about three quarters of the relay's CPU
 * (bench:offload, same machine: 55 to 65 ms of relay CPU per MiB moved with
 * it, 15 without; our offload throughput went from about 0.9x to 1.1x the
 * AGT anchor's, and the relay's own ceiling from about 16 to 65 MiB/s).
 */
export async function relaySocketClass(log = () => {}) {
  try {
    return await wsPackageClass();
  } catch (e) {
    log('warn', `host: the 'ws' package cannot be loaded (${errorText(e)}); the relay link uses Node's WebSocket, which has the relay compress every frame it sends (more CPU on both ends). Reinstall kars-mesh's dependencies`);
    return webSocketClass();
  }
}

/** How a `ws` package socket to the relay is opened: a bounded handshake, no compression. */
export const WS_OPTIONS = Object.freeze({ handshakeTimeout: 30_000, perMessageDeflate: false });

/** The `ws` package's WebSocket: the one that can run over a given connection (a proxy's tunnel). */
export async function wsPackageClass() {
  const m = await import('ws');
  return m.WebSocket ?? m.default;
}

// A close reason may hold at most 123 bytes of UTF-8; cut at a character boundary.
function utf8Truncate(text, maxBytes) {
  const buf = new TextEncoder().encode(text);
  if (buf.length <= maxBytes) return text;
  return new TextDecoder().decode(buf.subarray(0, maxBytes)).replace(/\uFFFD+$/, '');
}

/** A connect that got an HTTP answer, not a WebSocket. */
function notAWebSocket(status, type = '') {
  return `the server answered HTTP ${status}${type ? ` (${type})` : ''} instead of opening a WebSocket: is this the relay's address?`;
}

/** A `ws` package error text as the user reads it (its "Unexpected server response: 404" said plainly). */
function explainError(message) {
  const m = /^Unexpected server response: (\d{3})$/.exec(message);
  return m ? notAWebSocket(m[1]) : message;
}

/** What Node's own WebSocket says about every failed connect. */
const GENERIC_ERROR = 'WebSocket error';
const DIAGNOSE_MS = 3000;

/**
 * Why a WebSocket connect to `url` fails, found by trying it once with the
 * `ws` package (it names the error; Node's global WebSocket does not);
 * null when it cannot tell (or the connect works this time).
 */
export async function connectError(url, ms = DIAGNOSE_MS) {
  let WS;
  try {
    WS = await wsPackageClass();
  } catch {
    return null;
  }
  return new Promise((resolve) => {
    let ws;
    let timer;
    const done = (why) => {
      clearTimeout(timer);
      try { ws?.terminate(); } catch { /* ignore */ }
      resolve(why);
    };
    timer = setTimeout(() => done(`no WebSocket handshake within ${ms / 1000} s`), ms);
    timer.unref?.();
    try {
      ws = new WS(url, { handshakeTimeout: ms });
    } catch (e) {
      done(errorText(e));
      return;
    }
    ws.on('open', () => done(null));
    ws.on('error', (e) => done(e?.message || null));
    ws.on('unexpected-response', (req, res) => {
      const type = String(res.headers?.['content-type'] ?? '').split(';')[0].trim().slice(0, 60).replace(/[^\x20-\x7e]/g, '');
      req.destroy();
      res.destroy?.();
      done(notAWebSocket(res.statusCode, type));
    });
  });
}

/**
 * @param {object} o
 * @param {Function} o.WebSocketImpl  from relaySocketClass() (Node) or the page's WebSocket
 * @param {(event: object) => void} o.dispatch  where the socket events go
 * @param {(level: string, message: string) => void} o.log
 * @param {() => void} o.onFailure  counts a connect that never opened (node.ioFailures)
 * @param {{for: (url: string) => object|null}} [o.proxy]  proxy settings (js-host/proxy.js)
 * @param {Function} [o.ProxyWebSocketImpl]  from wsPackageClass(), when a proxy may be used
 */
export function createSockets({ WebSocketImpl, dispatch, log, onFailure, proxy, ProxyWebSocketImpl }) {
  /** socket id -> { ws, opened, closing, lastError, reported, replaced, closedPromise, resolveClosed } */
  const sockets = new Map();

  function reportClosed(id, entry, code, reason) {
    if (entry.reported) return;
    entry.reported = true;
    entry.tunnelAbort?.abort();
    if (sockets.get(id) === entry) sockets.delete(id);
    entry.resolveClosed();
    if (entry.replaced) return;
    dispatch({ tag: 'socket-closed', val: { socket: id, code, reason } });
  }

  function open(id, url) {
    const old = sockets.get(id);
    if (old) {
      // Not expected from the core; the old socket's close must not be reported under the reused id.
      log('warn', `host: socket ${id} opened again while open; closing the old one`);
      old.replaced = true;
      try { old.ws?.close(); } catch { /* ignore */ }
      sockets.delete(id);
    }
    const entry = { id, url, direct: true, ws: null, opened: false, closing: false, lastError: null, reported: false, replaced: false, diagnosing: false };
    entry.closedPromise = new Promise((r) => (entry.resolveClosed = r));
    sockets.set(id, entry);
    let ws;
    try {
      const via = proxy?.for(url);
      if (via) {
        entry.direct = false;
        // The tunnel first (its own 30 s bound), then the handshake inside it.
        // A failed tunnel is this socket's connect error, its text the reason.
        // Closing the socket before it opened gives the tunnel up too.
        entry.tunnelAbort = new AbortController();
        const { signal } = entry.tunnelAbort;
        const createConnection = (_opts, callback) => {
          proxyModule().then((m) => m.connectThroughProxy(via, { signal })).then((socket) => callback(null, socket), (e) => callback(e));
        };
        ws = new ProxyWebSocketImpl(url, { ...WS_OPTIONS, createConnection });
      } else {
        // The `ws` package has no connect timeout by default; the global WebSocket takes no options.
        ws = WebSocketImpl === globalThis.WebSocket ? new WebSocketImpl(url) : new WebSocketImpl(url, WS_OPTIONS);
      }
    } catch (e) {
      onFailure();
      // Reported through the queue: the core sees it after the current commands.
      reportClosed(id, entry, 1006, errorText(e));
      return;
    }
    entry.ws = ws;
    try { ws.binaryType = 'arraybuffer'; } catch { /* ignore */ }
    ws.addEventListener('open', () => onOpen(id, entry));
    ws.addEventListener('message', (ev) => onMessage(id, entry, ev.data));
    ws.addEventListener('error', (ev) => onError(id, entry, ev));
    ws.addEventListener('close', (ev) => onClose(id, entry, ev));
  }

  function onOpen(id, entry) {
    if (entry.reported || entry.replaced) return;
    entry.opened = true;
    dispatch({ tag: 'socket-opened', val: id });
  }

  function onMessage(id, entry, data) {
    if (entry.reported || entry.replaced) return;
    let text = data;
    if (typeof text !== 'string') {
      // The relay sends text only; be tolerant of a binary frame holding UTF-8.
      try {
        text = new TextDecoder().decode(text instanceof ArrayBuffer ? new Uint8Array(text) : text);
      } catch {
        log('debug', `host: socket ${id}: dropped a non-text frame`);
        return;
      }
    }
    dispatch({ tag: 'socket-frame', val: { socket: id, text } });
  }

  function onError(id, entry, ev) {
    entry.lastError = explainError(ev?.error?.message || ev?.message || GENERIC_ERROR);
    if (entry.reported || entry.replaced || entry.diagnosing) return;
    if (!entry.opened) {
      // A failed connect. Some WebSocket implementations (Node 20's
      // experimental global one) never follow up with a close event.
      if (!entry.closing) onFailure(); // not when the core itself gave up
      forceClose(entry);
      failedConnect(id, entry, entry.lastError);
    } else {
      // Expect a close event (1006); report it ourselves if none comes.
      setTimeout(() => {
        if (entry.reported) return;
        reportClosed(id, entry, 1006, entry.lastError);
        forceClose(entry);
      }, 1000).unref?.();
    }
  }

  function onClose(id, entry, ev) {
    if (entry.reported || entry.diagnosing) return;
    let code = Number(ev?.code) || 1006;
    let reason = typeof ev?.reason === 'string' ? ev.reason : '';
    if (!entry.opened) {
      if (!entry.closing) onFailure();
      failedConnect(id, entry, reason || entry.lastError);
      return;
    } else if (!reason && code === 1006 && entry.lastError) {
      reason = entry.lastError;
    }
    reportClosed(id, entry, code, reason);
  }

  function send(id, text) {
    const entry = sockets.get(id);
    if (!entry?.ws || !entry.opened || entry.closing) {
      log('debug', `host: socket ${id} is not open; frame dropped (the core gets socket-closed)`);
      return;
    }
    try {
      entry.ws.send(text);
    } catch (e) {
      log('debug', `host: socket ${id}: send failed: ${errorText(e)}`);
    }
  }

  /**
   * Report a connect that never opened. Node's own WebSocket gives no reason
   * at all ("WebSocket error"): then the `ws` package tries the URL once to
   * name it (connect ECONNREFUSED …, getaddrinfo ENOTFOUND …, the server
   * answered HTTP 200 instead of a WebSocket), so that "the relay cannot be
   * reached" can say why.
   */
  function failedConnect(id, entry, reason) {
    if (entry.reported || entry.diagnosing) return;
    if (entry.direct && !entry.closing && (!reason || reason === GENERIC_ERROR)) {
      entry.diagnosing = true;
      connectError(entry.url).then((why) => reportClosed(id, entry, 1006, why || reason || 'connection failed'));
      return;
    }
    reportClosed(id, entry, 1006, reason || 'connection failed');
  }

  function close(id, code, reason) {
    const entry = sockets.get(id);
    if (!entry) return; // already closed and reported
    closeEntry(entry, code, reason);
  }

  function closeEntry(entry, code, reason) {
    // Still finding out why its connect failed: the core gave it up, done.
    if (entry.diagnosing) reportClosed(entry.id, entry, 1006, entry.lastError || 'connection failed');
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
    entry.tunnelAbort?.abort();
    try {
      if (typeof entry.ws?.terminate === 'function') entry.ws.terminate();
      else entry.ws?.close();
    } catch { /* ignore */ }
  }

  /** Close every socket the engine left open; returns a promise per socket, settled once it is closed. */
  function closeAll(code, reason) {
    const closes = [];
    for (const entry of sockets.values()) {
      if (!entry.ws || entry.reported) continue;
      closeEntry(entry, code, reason);
      closes.push(entry.closedPromise);
    }
    return closes;
  }

  /** Drop every socket at once, without a close handshake (teardown: the engine hears nothing more). */
  function terminateAll() {
    for (const entry of sockets.values()) forceClose(entry);
    sockets.clear();
  }

  return { open, send, close, closeAll, terminateAll };
}
