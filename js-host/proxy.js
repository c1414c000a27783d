// The forward proxy the node's connections go through, when the environment
// names one (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY: what NemoClaw's
// OpenShell sandbox sets, where the only way out is its proxy).
//
// Every proxied connection, to the registry (HTTP) and to the relay
// (WebSocket), is an HTTP CONNECT tunnel, for http:// and ws:// destinations
// too: one mechanism for both, the only one OpenShell's proxy offers, and
// the one a WebSocket upgrade survives (a forwarding proxy that rewrites
// absolute-form requests need not pass `Upgrade`). TLS to an https:// or
// wss:// destination runs inside the tunnel, end to end (verified against
// the system's CAs and NODE_EXTRA_CA_CERTS, as without a proxy).
//
// Without any of these variables nothing here runs: fetch and the WebSocket
// are used exactly as before.
//
// A proxy URL may carry credentials (http://user:password@host:port); they go
// only into the Proxy-Authorization header of the CONNECT request. Every text
// this module makes names the proxy as scheme://host:port, never with them.
// Every failure text starts with "proxy " (the engine shows a relay connect
// failure that starts so as the relay's problem: js-host/ENGINE.md).

import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { errorText } from './node-error.js';

export const PROXY_CONNECT_TIMEOUT_MS = 30_000;

const DEFAULT_PORTS = { 'http:': 80, 'ws:': 80, 'https:': 443, 'wss:': 443 };
const SECURE = new Set(['https:', 'wss:']);

/** A proxy-controlled text (a status message) kept short and on one line. */
function tidy(text, max = 80) {
  const t = String(text ?? '').replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

/** host:port as a CONNECT request names it (an IPv6 address in brackets). */
function authority(host, port) {
  return `${net.isIPv6(host) ? `[${host}]` : host}:${port}`;
}

/** A URL's host without IPv6 brackets or a trailing dot, lower-cased. */
function bareHost(hostname) {
  let h = hostname.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h;
}

function portOf(u) {
  return u.port ? Number(u.port) : DEFAULT_PORTS[u.protocol];
}

// ---- the settings -----------------------------------------------------------

/**
 * One proxy setting, parsed. `invalid` is set (a text naming only the
 * variable, never its value: it may hold a password) when it cannot be used.
 */
function parseProxy(variable, value) {
  let raw = value.trim();
  // "host:port" alone means an http:// proxy (as curl reads it).
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(raw)) raw = `http://${raw}`;
  let u;
  try {
    u = new URL(raw);
  } catch {
    return { variable, invalid: `proxy setting ${variable} is not a usable proxy URL (expected http://host:port)` };
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    return {
      variable,
      scheme: u.protocol,
      invalid: `proxy setting ${variable} names a ${u.protocol.slice(0, -1)} proxy; kars-mesh speaks HTTP CONNECT only (an http:// or https:// proxy URL)`,
    };
  }
  if (!u.hostname) return { variable, invalid: `proxy setting ${variable} has no host (expected http://host:port)` };
  const host = bareHost(u.hostname);
  const port = u.port ? Number(u.port) : DEFAULT_PORTS[u.protocol];
  const label = `${u.protocol}//${authority(host, port)}`;
  const parsed = { variable, secure: u.protocol === 'https:', host, port, label };
  if (u.username || u.password) {
    const dec = (s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    };
    withAuth(parsed, `Basic ${Buffer.from(`${dec(u.username)}:${dec(u.password)}`).toString('base64')}`);
  }
  return parsed;
}

/** The Proxy-Authorization value, kept out of JSON and of `{...spread}` copies that could be logged. */
function withAuth(o, auth) {
  if (auth) Object.defineProperty(o, 'auth', { value: auth, enumerable: false });
  return o;
}

/** NO_PROXY: entries separated by commas or spaces (host, .domain, *.domain, IP, CIDR, any with :port, or *). */
function parseNoProxy(value) {
  const entries = [];
  let all = false;
  for (let e of String(value ?? '').toLowerCase().split(/[\s,]+/)) {
    e = e.trim();
    if (!e) continue;
    if (e === '*') {
      all = true;
      continue;
    }
    let host = e;
    let port;
    const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(e);
    if (bracket) {
      host = bracket[1];
      port = bracket[2];
    } else if ((e.match(/:/g) ?? []).length === 1) {
      const i = e.lastIndexOf(':');
      if (/^\d+$/.test(e.slice(i + 1))) {
        host = e.slice(0, i);
        port = e.slice(i + 1);
      }
    }
    const entry = { port: port ? Number(port) : undefined };
    const cidr = /^(.+)\/(\d{1,3})$/.exec(host);
    if (cidr && net.isIP(cidr[1])) {
      const family = net.isIP(cidr[1]) === 6 ? 'ipv6' : 'ipv4';
      const prefix = Number(cidr[2]);
      if (prefix > (family === 'ipv6' ? 128 : 32)) continue;
      entry.block = new net.BlockList();
      entry.block.addSubnet(cidr[1], prefix, family);
      entry.family = family;
    } else if (net.isIP(host)) {
      entry.ip = host;
    } else {
      entry.domain = host.replace(/^\*?\./, '').replace(/\.$/, '');
      if (!entry.domain) continue;
    }
    entries.push(entry);
  }
  return { all, entries };
}

function bypassed(noProxy, host, port) {
  if (noProxy.all) return true;
  const ipFamily = net.isIP(host);
  for (const e of noProxy.entries) {
    if (e.port !== undefined && e.port !== port) continue;
    if (e.block) {
      if (ipFamily && e.block.check(host, ipFamily === 6 ? 'ipv6' : 'ipv4')) return true;
    } else if (e.ip) {
      if (ipFamily && host === e.ip) return true;
    } else if (host === e.domain || host.endsWith(`.${e.domain}`)) {
      return true;
    }
  }
  return false;
}

/**
 * The node's proxy settings.
 *
 * @param {object|string|false|null|undefined} input  an object of environment
 *   variables (default `process.env`: HTTPS_PROXY/https_proxy,
 *   HTTP_PROXY/http_proxy, ALL_PROXY/all_proxy, NO_PROXY/no_proxy; the
 *   lower-case spelling wins when both are set, as in curl), a proxy URL for
 *   every destination, or false/null for none
 * @returns {{ any: boolean, for: (url: string) => object|null, describe: () => string, warnings: string[] }}
 *   `for(url)` is the proxy a connection to `url` goes through (null: direct)
 */
export function proxySettings(input = process.env) {
  const warnings = [];
  let https_ = null;
  let http_ = null;
  let noProxyText = '';
  if (typeof input === 'string') {
    if (input.trim()) https_ = http_ = parseProxy('proxy', input);
  } else if (input && typeof input === 'object') {
    const pick = (lower, upper) => {
      for (const name of [lower, upper]) {
        const v = input[name];
        if (typeof v === 'string' && v.trim()) return { name, value: v };
      }
      return null;
    };
    const hs = pick('https_proxy', 'HTTPS_PROXY');
    const hp = pick('http_proxy', 'HTTP_PROXY');
    const all = pick('all_proxy', 'ALL_PROXY');
    let allProxy = all && parseProxy(all.name, all.value);
    // ALL_PROXY is often a SOCKS proxy meant for other tools: one we cannot
    // speak is left out (said once), rather than failing every connection.
    if (allProxy?.invalid && allProxy.scheme) {
      warnings.push(`host: ${all.name} names a ${allProxy.scheme.slice(0, -1)} proxy, which kars-mesh does not speak (HTTP CONNECT only); it is not used`);
      allProxy = null;
    }
    https_ = hs ? parseProxy(hs.name, hs.value) : allProxy;
    http_ = hp ? parseProxy(hp.name, hp.value) : allProxy;
    noProxyText = pick('no_proxy', 'NO_PROXY')?.value ?? '';
  }
  const noProxy = parseNoProxy(noProxyText);
  const any = !!(https_ || http_);
  return {
    any,
    warnings,
    for(url) {
      if (!any) return null;
      let u;
      try {
        u = new URL(url);
      } catch {
        return null; // the connection fails as it would without a proxy
      }
      const p = SECURE.has(u.protocol) ? https_ : DEFAULT_PORTS[u.protocol] ? http_ : null;
      if (!p) return null;
      const host = bareHost(u.hostname);
      const port = portOf(u);
      if (bypassed(noProxy, host, port)) return null;
      return withAuth({ ...p, target: { host, port, secure: SECURE.has(u.protocol) } }, p.auth);
    },
    /** One line for the log: which proxy for what (no credentials). */
    describe() {
      const name = (p) => (p ? p.invalid ?? `${p.label} (${p.variable})` : 'direct');
      return `https/wss through ${name(https_)}, http/ws through ${name(http_)}${noProxyText.trim() ? `; not for NO_PROXY ${tidy(noProxyText, 200)}` : ''}`;
    },
  };
}

// ---- the tunnel -------------------------------------------------------------

function refusal(proxy, dest, res) {
  const status = `${res.statusCode}${res.statusMessage ? ` ${tidy(res.statusMessage)}` : ''}`;
  const who = `proxy ${proxy.label} (${proxy.variable})`;
  switch (res.statusCode) {
    case 403:
      return `${who} refused the destination ${dest} (CONNECT answered ${status}): its policy does not allow this host and port; under NemoClaw/OpenShell the sandbox's network policy preset must allow ${dest} (nemoclaw <sandbox> policy add)`;
    case 401: // what some proxies (tinyproxy) answer instead of 407
    case 407:
      return proxy.auth
        ? `${who} refused the credentials in its URL for CONNECT to ${dest} (${status})`
        : `${who} wants credentials for CONNECT to ${dest} (${status}): put them in the proxy URL (http://user:password@host:port)`;
    default:
      return `${who} could not open a tunnel to ${dest} (CONNECT answered ${status})`;
  }
}

/**
 * A connection to `via.target` through the proxy `via` (from settings.for()):
 * the CONNECT tunnel, with TLS to the destination inside it for https/wss.
 * Rejects with an Error whose message starts with "proxy ".
 *
 * @param {object} via
 * @param {{signal?: AbortSignal, timeoutMs?: number}} [o]
 * @returns {Promise<import('node:net').Socket>}
 */
export function connectThroughProxy(via, { signal, timeoutMs = PROXY_CONNECT_TIMEOUT_MS } = {}) {
  if (via.invalid) return Promise.reject(new Error(via.invalid));
  const { host, port, secure } = via.target;
  const dest = authority(host, port);
  const who = `proxy ${via.label} (${via.variable})`;
  return new Promise((resolve, reject) => {
    let settled = false;
    let req;
    let timer;
    let live; // the tunnel, then the TLS session over it, until handed out
    const done = (err, socket) => {
      if (settled) {
        socket?.destroy();
        return;
      }
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) {
        req?.destroy();
        live?.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onAbort = () => done(signal.reason instanceof Error ? signal.reason : new Error(`${who}: connection to ${dest} aborted`));
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    timer = setTimeout(
      () => done(new Error(`${who} did not open a tunnel to ${dest} within ${Math.round(timeoutMs / 1000)} s`)),
      timeoutMs,
    );
    const headers = { host: dest };
    if (via.auth) headers['proxy-authorization'] = via.auth;
    const options = { host: via.host, port: via.port, method: 'CONNECT', path: dest, headers, agent: false, setHost: false };
    if (via.secure) options.servername = net.isIP(via.host) ? undefined : via.host;
    try {
      req = (via.secure ? https : http).request(options);
    } catch (e) {
      return done(new Error(`${who} is unreachable: ${errorText(e)}`));
    }
    req.on('connect', (res, socket, head) => {
      if (res.statusCode < 200 || res.statusCode > 299) {
        socket.destroy();
        return done(new Error(refusal(via, dest, res)));
      }
      live = socket;
      if (head?.length) socket.unshift(head);
      if (!secure) return done(null, socket);
      // `host` is what the certificate must name (an IP address too); SNI only for a name.
      const t = tls.connect({ socket, host, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'] });
      live = t;
      const onTlsError = (e) =>
        done(new Error(`${who}: TLS with ${dest} through the tunnel failed: ${errorText(e)} (a proxy that inspects TLS needs its CA certificate in NODE_EXTRA_CA_CERTS)`));
      t.on('error', onTlsError);
      // The tunnel under the TLS session: its failure is the session's.
      socket.on('error', (e) => (settled ? t.destroy(e) : onTlsError(e)));
      t.once('secureConnect', () => {
        t.off('error', onTlsError);
        done(null, t);
      });
    });
    req.on('response', (res) => {
      // Not an answer to CONNECT (Node reports those as 'connect').
      res.resume();
      done(new Error(`${who} did not answer CONNECT to ${dest} (HTTP ${res.statusCode})`));
    });
    req.on('error', (e) => {
      const code = e?.code;
      const text = code === 'ECONNRESET' || code === 'HPE_INVALID_CONSTANT' || /socket hang up/.test(e?.message ?? '')
        ? `${who} closed the connection before answering CONNECT to ${dest} (${errorText(e)})`
        : `${who} is unreachable: ${errorText(e)}`;
      done(new Error(text));
    });
    req.end();
  });
}

// ---- HTTP through the tunnel ------------------------------------------------

/**
 * One HTTP request through the proxy (what fetch does without one): the
 * answer's status and a body stream. `redirect: manual` as in http.js: a 3xx
 * is an answer like any other.
 *
 * @param {object} via  settings.for(url)
 * @param {{url: string, method: string, headers: Headers, body?: Uint8Array|string, signal?: AbortSignal}} r
 * @returns {Promise<{status: number, contentLength: number, body: AsyncIterable<Uint8Array>, cancel: () => void}>}
 */
export async function requestThroughProxy(via, { url, method, headers, body, signal }) {
  const socket = await connectThroughProxy(via, { signal });
  const u = new URL(url);
  const h = {};
  for (const [k, v] of headers) h[k] = v; // Headers iterates lower-cased, combined
  h.host = u.host;
  h.accept ??= '*/*';
  let payload;
  if (body != null) {
    payload = ArrayBuffer.isView(body) ? Buffer.from(body.buffer, body.byteOffset, body.byteLength) : Buffer.from(body);
    h['content-length'] = String(payload.length);
  }
  return new Promise((resolve, reject) => {
    const req = http.request({
      method,
      path: `${u.pathname}${u.search}`,
      headers: h,
      setHost: false,
      createConnection: () => socket,
      signal,
    });
    req.on('response', (res) => {
      resolve({
        status: res.statusCode,
        contentLength: Number(res.headers['content-length']),
        body: res,
        cancel: () => {
          res.destroy();
          socket.destroy();
        },
      });
    });
    req.on('error', (e) => {
      socket.destroy();
      reject(e);
    });
    req.end(payload);
  });
}
