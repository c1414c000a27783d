// The engine's HTTP requests (the registry): `http-request` is fetched with
// its timeout and answered with `http-response` (any status, 4xx and 5xx
// included: the engine decides what they mean) or `http-failed` (no status:
// network error, timeout, host stopped). A destination the proxy settings
// send through a proxy goes through its CONNECT tunnel (js-host/proxy.js);
// every other request is fetched as it always was. Nothing here needs Node
// (the browser host uses it with the page's fetch); proxy.js is loaded only
// when a proxy is set.

import { errorText } from './node-error.js';
import { MAX_TIMEOUT } from './timers.js';

const DEFAULT_HTTP_TIMEOUT_MS = 30_000;
// The engine keeps a response in its memory: a hostile server cannot make it big.
const MAX_HTTP_BODY = 16 * 1024 * 1024;

/**
 * @param {number} declared  the content-length header (NaN if none)
 * @param {AsyncIterable<Uint8Array>|null} body
 * @param {() => Promise<void>|void} cancel
 */
async function readBodyCapped(declared, body, cancel, limit) {
  if (!body) return new Uint8Array(0);
  if (Number.isFinite(declared) && declared > limit) {
    await Promise.resolve(cancel()).catch(() => {});
    throw new Error(`response body too large (${declared} bytes, limit ${limit})`);
  }
  const chunks = [];
  let total = 0;
  for await (const chunk of body) {
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
 * @param {object} o
 * @param {(event: object) => void} o.dispatch  where the answers go
 * @param {() => void} o.onFailure  counts an http-failed (node.ioFailures)
 * @param {{for: (url: string) => object|null}} [o.proxy]  proxy settings (js-host/proxy.js)
 */
export function createHttp({ dispatch, onFailure, proxy }) {
  /** in-flight requests (promises settling after their event is dispatched) */
  const inflight = new Set();
  const hostAbort = new AbortController();

  function request({ id, method, url, headers, body, timeoutMs }) {
    const ms = timeoutMs > 0 ? Math.min(timeoutMs, MAX_TIMEOUT) : DEFAULT_HTTP_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(ms);
    const signal = typeof AbortSignal.any === 'function' ? AbortSignal.any([timeout, hostAbort.signal]) : timeout;
    let via = null;
    const pending = (async () => {
      const h = new Headers();
      for (const [k, v] of headers ?? []) h.append(k, v);
      const sendBody = body != null && method !== 'GET' && method !== 'HEAD' ? body : undefined;
      via = proxy?.for(url) ?? null;
      if (via) {
        const { requestThroughProxy } = await import('./proxy.js');
        const res = await requestThroughProxy(via, { url, method, headers: h, body: sendBody, signal });
        try {
          const bytes = await readBodyCapped(res.contentLength, res.body, res.cancel, MAX_HTTP_BODY);
          return { tag: 'http-response', val: { id, status: res.status, body: bytes } };
        } finally {
          res.cancel();
        }
      }
      const init = { method, headers: h, signal, redirect: 'manual' };
      if (sendBody !== undefined) init.body = sendBody;
      const res = await fetch(url, init);
      const bytes = await readBodyCapped(Number(res.headers.get('content-length')), res.body, () => res.body.cancel(), MAX_HTTP_BODY);
      return { tag: 'http-response', val: { id, status: res.status, body: bytes } };
    })().then(
      (event) => event,
      (e) => {
        const message = timeout.aborted
          ? `request timed out after ${ms} ms${via ? ` through proxy ${via.label} (${via.variable})` : ''}`
          : hostAbort.signal.aborted ? 'host stopped' : errorText(e);
        return { tag: 'http-failed', val: { id, message } };
      },
    ).then((event) => {
      inflight.delete(pending);
      if (event.tag === 'http-failed') onFailure();
      dispatch(event);
    });
    inflight.add(pending);
  }

  return {
    request,
    /** The requests still running: stop() waits (bounded) for their answers to reach the engine. */
    running: () => [...inflight],
    /** Abort every request; their answers are not the engine's business any more. */
    abortAll() {
      hostAbort.abort();
      inflight.clear();
    },
  };
}
