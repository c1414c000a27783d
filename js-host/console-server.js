// `kars-mesh console`: serves the browser agent console (js-host/console/) on
// 127.0.0.1 and forwards the registry under the page's own origin.
//
//   import { startConsoleServer } from './console-server.js';
//   const s = await startConsoleServer({ port: 0, relayUrl, registryUrl });
//   s.url   // 'http://127.0.0.1:<port>/'
//   await s.close();
//
// Why a forward: the AGT registry sends no CORS headers, so a page cannot read
// its answers from another origin. `/registry/<path>` is sent on to
// `<registry>/<path>`: the page's engine keeps the registry's own URL (the
// one pairing tokens name) and its host sends the requests to
// `<origin>/registry` (js-host/console/engine-worker-browser.js, routes). The relay is a WebSocket, which CORS does not govern: the
// page's engine connects to it directly. A kars operator who serves the
// console from elsewhere must give the registry either CORS headers for that
// origin or a route under the console's own origin (README, "Browser console").
//
// What is served: the console's files, the component (js-host/gen/) and the
// host modules the browser shares with Node, nothing else of the package.
// Every answer checks the Host header (a page of another site that rebinds
// its name to 127.0.0.1 is refused), and the registry forward takes only
// requests of the console's own origin (no other site may use it as a proxy).

import http from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { promisify } from 'node:util';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { nameProblem } from './agent-name.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CONSOLE_PATH = '/js-host/console/';

/** The host modules the Worker imports (platform-neutral, shared with the Node host). */
const SHARED_MODULES = [
  'core.js', 'engine-load.js', 'random.js', 'event-loop.js', 'node-error.js', 'sealed.js', 'sockets.js', 'http.js',
  'timers.js', 'tool-calls.js', 'log-escape.js', 'agent-name.js', 'tool-words.js',
].map((f) => `js-host/${f}`);
const SERVED_PREFIXES = ['js-host/console/', 'js-host/gen/'];

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};
/** Registry answers are small JSON; a larger one is not passed on. */
const MAX_FORWARD_BODY = 16 * 1024 * 1024;
const FORWARD_TIMEOUT_MS = 30_000;
/** Request headers passed on to the registry (the rest, cookies included, stay here). */
const FORWARD_REQUEST_HEADERS = ['content-type', 'authorization', 'accept', 'x-agent-did', 'x-request-id'];

const brotli = promisify(zlib.brotliCompress);
const gzip = promisify(zlib.gzip);

/**
 * @param {object} o
 * @param {number} [o.port=0]          0: a free port
 * @param {string} [o.host='127.0.0.1']
 * @param {string} o.relayUrl          the relay the page's engine connects to (directly)
 * @param {string} o.registryUrl       the registry the server forwards /registry/ to
 * @param {string} [o.relayToken]      the relay's token, if it has one (handed to the page)
 * @param {string} [o.name]            a display name suggested to new identities
 * @param {string[]} [o.extraPrefixes] tests only: more package paths to serve (e.g. 'tests/')
 * @param {(line: string) => void} [o.log]
 */
export async function startConsoleServer({ port = 0, host = '127.0.0.1', relayUrl, registryUrl, relayToken, name, extraPrefixes = [], log = () => {} }) {
  const relay = new URL(relayUrl);
  const registry = new URL(registryUrl);
  // Refused without quoting the URL, which holds the password (as the
  // engine and the CLI refuse it): kars-mesh never sends URL credentials.
  for (const [what, u] of [['relay', relay], ['registry', registry]]) {
    if (u.username || u.password) throw new Error(`the ${what} URL carries a user name or password (user:password@host): remove them`);
  }
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(relay.protocol)) throw new Error(`the relay URL must be http(s) or ws(s): ${relayUrl}`);
  if (!['http:', 'https:'].includes(registry.protocol)) throw new Error(`the registry URL must be http(s): ${registryUrl}`);
  const registryBase = registryUrl.replace(/\/+$/, '');
  const relayWs = new URL(relay);
  relayWs.protocol = relay.protocol === 'https:' || relay.protocol === 'wss:' ? 'wss:' : 'ws:';
  const prefixes = [...SERVED_PREFIXES, ...extraPrefixes];
  const compressed = new Map(); // `${file}:${mtime}:${encoding}` -> Promise<Buffer>

  let origin;
  let allowedHosts;
  // With a relay token: the key a page must show to be given it (in the
  // printed address's fragment, which no request carries by itself).
  const pageKey = relayToken ? randomBytes(24).toString('base64url') : null;

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      log(`console: ${req.method} ${req.url}: ${e?.message ?? e}`);
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    });
  });

  function send(res, status, type, body, headers = {}) {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...headers });
    res.end(body);
  }

  async function handle(req, res) {
    // A name that rebinds to 127.0.0.1 must not reach the console or the forward.
    if (!allowedHosts.has(String(req.headers.host ?? '').toLowerCase())) {
      return send(res, 421, 'text/plain; charset=utf-8', 'this console answers only at its own address (127.0.0.1 / localhost)\n');
    }
    const url = new URL(req.url, origin);
    if (url.pathname === '/registry' || url.pathname.startsWith('/registry/')) return forward(req, res, url);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { allow: 'GET, HEAD' });
    if (url.pathname === '/' || url.pathname === '/index.html') {
      res.writeHead(302, { location: `${CONSOLE_PATH}${url.search}` });
      return res.end();
    }
    if (url.pathname === `${CONSOLE_PATH}config.json`) {
      // The relay token goes only to a page opened at the address printed
      // for it (its key): any local user can reach 127.0.0.1, and the token
      // is a secret (kept out of flags and the process list for the same reason).
      if (pageKey && !sameKey(req.headers['x-kars-console-key'], pageKey)) {
        return send(res, 403, TYPES['.json'], JSON.stringify({
          error: 'this console hands its relay token only to the page opened at the address `kars-mesh console` printed (the one ending in #key=…); open that address',
        }));
      }
      // The engine keeps the registry's own URL (the one pairing tokens name);
      // the page's host sends its requests through this server's forward.
      const config = { relay_url: relayUrl, registry_url: registryBase, registry_via: `${origin}/registry` };
      if (relayToken) config.relay_token = relayToken;
      if (name) config.name = name;
      return send(res, 200, TYPES['.json'], JSON.stringify(config));
    }
    return serveFile(req, res, url.pathname);
  }

  async function serveFile(req, res, pathname) {
    let rel;
    try {
      rel = decodeURIComponent(pathname).replace(/^\/+/, '');
    } catch {
      return send(res, 400, 'text/plain; charset=utf-8', 'bad path\n');
    }
    if (rel.endsWith('/')) rel += 'index.html';
    const parts = rel.split('/');
    const allowed = !parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\\') || p.includes('\0'))
      && (SHARED_MODULES.includes(rel) || prefixes.some((p) => rel.startsWith(p)));
    if (!allowed) return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    const file = path.join(ROOT, ...parts);
    let st;
    try {
      st = await stat(file);
    } catch {
      return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    }
    if (!st.isFile()) return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
    const headers = {};
    if (rel.startsWith('js-host/console/') && rel.endsWith('.html')) Object.assign(headers, pageHeaders());
    // The component and the modules go compressed (brotli, else gzip), as a web server would send them.
    const accepts = String(req.headers['accept-encoding'] ?? '');
    const encoding = /\bbr\b/.test(accepts) ? 'br' : /\bgzip\b/.test(accepts) ? 'gzip' : null;
    let body;
    if (encoding && st.size > 1024) {
      body = await compressedFile(file, st, encoding);
      headers['content-encoding'] = encoding;
      headers.vary = 'accept-encoding';
    } else {
      body = await readFile(file);
    }
    headers['content-length'] = String(body.length);
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff', ...headers });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  /** A file compressed once (brotli 11 takes seconds for the core: it is started when the server starts). */
  function compressedFile(file, st, encoding) {
    const key = `${file}:${st.mtimeMs}:${encoding}`;
    let p = compressed.get(key);
    if (!p) {
      p = readFile(file).then((raw) =>
        encoding === 'br'
          ? brotli(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length } })
          : gzip(raw, { level: 9 }));
      compressed.set(key, p);
      p.catch(() => compressed.delete(key));
    }
    return p;
  }

  /** Compress the component ahead of the first page load. */
  async function warm() {
    const gen = path.join(ROOT, 'js-host/gen');
    for (const f of ['kars_mesh.component.core.wasm', 'kars_mesh.component.js']) {
      const file = path.join(gen, f);
      try {
        const st = await stat(file);
        await Promise.all([compressedFile(file, st, 'br'), compressedFile(file, st, 'gzip')]);
      } catch {
        /* not built: the page says so when it loads */
      }
    }
  }

  /** The page's own policy: its scripts only, the relay and this origin to talk to, no framing. */
  function pageHeaders() {
    const connect = ["'self'", relayWs.origin, relay.origin].filter((v, i, a) => a.indexOf(v) === i).join(' ');
    return {
      'content-security-policy': [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self'",
        `connect-src ${connect}`,
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
      ].join('; '),
      'referrer-policy': 'no-referrer',
      'cross-origin-opener-policy': 'same-origin',
      'x-frame-options': 'DENY',
    };
  }

  async function forward(req, res, url) {
    // Only the console's own pages may use the forward (no other site can
    // make this machine's browser talk to the registry through it).
    const reqOrigin = req.headers.origin;
    const site = req.headers['sec-fetch-site'];
    if ((reqOrigin !== undefined && reqOrigin !== origin) || (site !== undefined && site !== 'same-origin' && site !== 'none')) {
      return send(res, 403, 'text/plain; charset=utf-8', 'the registry forward serves only the console\'s own pages\n');
    }
    const target = `${registryBase}${url.pathname.slice('/registry'.length)}${url.search}`;
    const headers = {};
    for (const h of FORWARD_REQUEST_HEADERS) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
    const chunks = [];
    let size = 0;
    for await (const c of req) {
      size += c.length;
      if (size > MAX_FORWARD_BODY) return send(res, 413, 'text/plain; charset=utf-8', 'request body too large\n');
      chunks.push(c);
    }
    let upstream;
    try {
      upstream = await fetch(target, {
        method: req.method,
        headers,
        body: chunks.length && req.method !== 'GET' && req.method !== 'HEAD' ? Buffer.concat(chunks) : undefined,
        redirect: 'manual',
        signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
      });
    } catch (e) {
      const why = e?.cause?.code ?? e?.message ?? String(e);
      log(`console: registry unreachable at ${registryBase}: ${why}`);
      // 502 with a text the engine shows as the registry's answer.
      return send(res, 502, 'text/plain; charset=utf-8', `registry unreachable at ${registryBase} (from the console server): ${why}\n`);
    }
    const body = Buffer.from(await upstream.arrayBuffer());
    if (body.length > MAX_FORWARD_BODY) return send(res, 502, 'text/plain; charset=utf-8', 'registry answer too large\n');
    const out = { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream', 'cache-control': 'no-store', 'content-length': String(body.length) };
    res.writeHead(upstream.status, out);
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const warming = warm();
  const bound = server.address().port;
  origin = `http://${host}:${bound}`;
  allowedHosts = new Set([`${host}:${bound}`, `localhost:${bound}`, `127.0.0.1:${bound}`]);
  return {
    url: `${origin}/`,
    /** The address to open: with a relay token, it carries the page's key. */
    openUrl: pageKey ? `${origin}/#key=${pageKey}` : `${origin}/`,
    consoleUrl: `${origin}${CONSOLE_PATH}`,
    origin,
    port: bound,
    server,
    /** Resolves once the component is compressed (the first page load then waits for nothing). */
    warmed: warming,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

/** `given` is the page key (compared in constant time). */
function sameKey(given, key) {
  if (typeof given !== 'string') return false;
  const a = Buffer.from(given);
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * The compressed sizes of the component as the console serves it (bench and
 * README): the JS glue and the core modules, raw, gzip -9 and brotli 11.
 */
export async function componentSizes() {
  const gen = path.join(ROOT, 'js-host/gen');
  const files = ['kars_mesh.component.js', 'kars_mesh.component.core.wasm', 'kars_mesh.component.core2.wasm', 'kars_mesh.component.core3.wasm'];
  const out = [];
  for (const f of files) {
    const raw = await readFile(path.join(gen, f));
    const br = await brotli(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length } });
    const gz = await gzip(raw, { level: 9 });
    out.push({ file: f, raw: raw.length, gzip: gz.length, brotli: br.length });
  }
  return out;
}

export const CONSOLE_USAGE = `Usage: kars-mesh console [--port N] [--relay URL] [--registry URL] [--name NAME]

Serve the browser agent console on http://127.0.0.1:<port>/ and keep serving
until Ctrl-C. Open that address in a browser: the page runs the same kars-mesh
engine in a Web Worker (identity, pairing, discover, send, inbox, offload),
with its state in the browser's IndexedDB for this address.

The registry is forwarded under the page's own address (/registry/), because
the AgentMesh registry sends no CORS headers; the page connects to the relay's
WebSocket directly.
  --port N         port on 127.0.0.1 (default 8090; 0 picks a free one)
  --relay URL      relay base URL     (env KARS_MESH_RELAY, default http://127.0.0.1:8083)
  --registry URL   registry base URL  (env KARS_MESH_REGISTRY, default http://127.0.0.1:8082)
  --name NAME      display name suggested to a new identity in the page
A relay token in KARS_MESH_RELAY_TOKEN is handed only to a page opened at the
printed address (it ends in #key=…, a key made for this run of the server).`;

const CONSOLE_FLAGS = { port: { value: true }, relay: { value: true }, registry: { value: true }, name: { value: true }, help: { value: false } };

/**
 * `kars-mesh console ...` (argv without the program name, "console" first).
 * Resolves with the exit code once the server is closed (signal or error).
 */
export async function mainConsole(argv, { out, err, env = process.env, signal } = {}) {
  const { parseArgv, UsageError } = await import('./flags.js');
  let flags;
  try {
    let words;
    ({ words, flags } = parseArgv(argv.slice(1), { flags: CONSOLE_FLAGS, short: { h: 'help' } }));
    if (words.length && !flags.help) throw new UsageError(`unexpected argument ${JSON.stringify(words[0])}`);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`kars-mesh: ${e.message}\n`);
    err(CONSOLE_USAGE);
    return 2;
  }
  if (flags.help) {
    out(CONSOLE_USAGE);
    return 0;
  }
  const port = flags.port === undefined ? 8090 : Number(flags.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    err(`kars-mesh: --port must be a whole number from 0 to 65535, not ${JSON.stringify(flags.port)}\n`);
    err(CONSOLE_USAGE);
    return 2;
  }
  const relayUrl = flags.relay ?? (env.KARS_MESH_RELAY || 'http://127.0.0.1:8083');
  const registryUrl = flags.registry ?? (env.KARS_MESH_REGISTRY || 'http://127.0.0.1:8082');
  // Named as the other commands name them ("Invalid URL" said neither
  // which setting nor what was wrong).
  for (const [flag, envName, value, example] of [
    ['--relay', 'KARS_MESH_RELAY', relayUrl, 'http://127.0.0.1:8083'],
    ['--registry', 'KARS_MESH_REGISTRY', registryUrl, 'http://127.0.0.1:8082'],
  ]) {
    if (URL.canParse(String(value).trim())) continue;
    const from = flags[flag.slice(2)] !== undefined ? flag : envName;
    err(`kars-mesh: ${from} must be a URL like ${example}, not ${JSON.stringify(value)}\n`);
    err(CONSOLE_USAGE);
    return 2;
  }
  // The page would hand the name to every new identity's engine, which
  // refuses one that cannot be sent to: said here, once.
  const why = flags.name === undefined ? undefined : nameProblem(flags.name);
  if (why) {
    err(`kars-mesh: --name ${JSON.stringify(flags.name)} cannot be an agent's name (${why}); other agents send to it: give one word of at most 128 characters, such as alice or laptop-claw\n`);
    err(CONSOLE_USAGE);
    return 2;
  }
  let s;
  try {
    s = await startConsoleServer({ port, relayUrl, registryUrl, relayToken: env.KARS_MESH_RELAY_TOKEN, name: flags.name, log: (l) => err(l) });
  } catch (e) {
    err(`kars-mesh: cannot serve the console: ${e?.code === 'EADDRINUSE' ? `port ${port} on 127.0.0.1 is in use (pick another with --port, or --port 0)` : e?.message ?? e}`);
    return e?.code === 'EADDRINUSE' ? 3 : 2;
  }
  out(`kars-mesh console: ${s.openUrl}`);
  out(`  relay    ${relayUrl} (the page connects to it directly)`);
  out(`  registry ${registryUrl} (forwarded as ${s.origin}/registry)`);
  out('Open the address in a browser. Ctrl-C stops serving (the identities stay in the browser).');
  await new Promise((resolve) => {
    const stop = () => resolve();
    signal?.addEventListener('abort', stop, { once: true });
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await s.close();
  return 0;
}
