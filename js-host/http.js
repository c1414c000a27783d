// The engine's HTTP requests (the registry): `http-request` is fetched with
// its timeout and answered with `http-response` (any status, 4xx and 5xx
// included: the engine decides what they mean) or `http-failed` (no status:
// network error, timeout, host stopped).

import { errorText } from './node-error.js';
import { MAX_TIMEOUT } from './timers.js';

const DEFAULT_HTTP_TIMEOUT_MS = 30_000;
// The engine keeps a response in its memory: a hostile server cannot make it big.
const MAX_HTTP_BODY = 16 * 1024 * 1024;

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
 * @param {object} o
 * @param {(event: object) => void} o.dispatch  where the answers go
 * @param {() => void} o.onFailure  counts an http-failed (node.ioFailures)
 */
export function createHttp({ dispatch, onFailure }) {
  /** in-flight requests (promises settling after their event is dispatched) */
  const inflight = new Set();
  const hostAbort = new AbortController();

  function request({ id, method, url, headers, body, timeoutMs }) {
    const ms = timeoutMs > 0 ? Math.min(timeoutMs, MAX_TIMEOUT) : DEFAULT_HTTP_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(ms);
    const signal = typeof AbortSignal.any === 'function' ? AbortSignal.any([timeout, hostAbort.signal]) : timeout;
    const pending = (async () => {
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
