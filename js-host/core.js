// Loader for the kars-mesh wasm core (the WebAssembly component transpiled by
// `jco transpile --instantiation async --no-wasi-shim` into ./gen/).
//
//   import { loadCore } from './core.js';
//   const { engine, toolkit } = await loadCore({ storage, random, now, log });
//
// Host services (the WIT `kars:mesh/host` interface) are plain functions:
//   storage: { get(key) -> Uint8Array | undefined, list(prefix) -> string[] }
//            (reads only; writes arrive as `store`/`erase` engine commands)
//   random:  (len) -> Uint8Array of exactly `len` CSPRNG bytes
//   now:     () -> milliseconds since the Unix epoch (number or bigint)
//   log:     (level: 'debug'|'info'|'warn'|'error', message: string) -> void
//
// Calling conventions of the jco 1.11.2 glue, as seen by callers of the exports:
//   - `result<T, string>` exports return T on ok and THROW on err: the thrown
//     value is an Error (jco's ComponentError) whose `.message` and `.payload`
//     are the core's error string. This loader wraps nothing; callers catch.
//   - `option<T>` is T | undefined (null also accepted going in).
//   - `list<u8>` must be a Uint8Array (a Buffer is fine; a plain Array is not:
//     the glue reads `.byteLength`). Lists coming out are fresh copies.
//   - `u64` is a bigint out of the core; going in, a number or bigint.
//   - records are objects with camelCase fields; `variant` values are
//     `{ tag: 'kebab-name', val }`; tuples are arrays; enums are strings.
//   - A host function that throws aborts the core call mid-way (Rust does not
//     unwind), so host functions should not throw: the instance may be left
//     inconsistent. Treat such an instance as dead.
//
// Browsers: pass `getCoreModule(name) -> Promise<WebAssembly.Module>` (for
// example `WebAssembly.compileStreaming(fetch(new URL(name, base)))`). In Node
// the default reads ./gen/<name> from disk.

import { instantiate } from './gen/kars_mesh.component.js';

const GEN_DIR = new URL('./gen/', import.meta.url);

const isNode = typeof process !== 'undefined' && !!process.versions?.node;

/** Default core-module loader: fs in Node, fetch elsewhere. */
async function defaultGetCoreModule(name) {
  const url = new URL(name, GEN_DIR);
  if (isNode) {
    const { readFile } = await import('node:fs/promises');
    return WebAssembly.compile(await readFile(url));
  }
  return WebAssembly.compileStreaming(fetch(url));
}

/**
 * Default CSPRNG: Web Crypto, drawn 4 KiB at a time. One getRandomValues call
 * costs about 2.7 µs in Node 20 whatever its size, and the core asks for 12
 * bytes per message nonce, so pooling removes most of the per-message cost.
 * Bytes handed out are wiped from the pool; the pool is as good as its source.
 */
const POOL_SIZE = 4096;
const pool = new Uint8Array(POOL_SIZE);
let poolOff = POOL_SIZE;
function defaultRandom(len) {
  const out = new Uint8Array(len);
  if (len > POOL_SIZE / 4) {
    for (let off = 0; off < len; off += 65536) {
      globalThis.crypto.getRandomValues(out.subarray(off, Math.min(len, off + 65536)));
    }
    return out;
  }
  if (poolOff + len > POOL_SIZE) {
    globalThis.crypto.getRandomValues(pool);
    poolOff = 0;
  }
  out.set(pool.subarray(poolOff, poolOff + len));
  pool.fill(0, poolOff, poolOff + len);
  poolOff += len;
  return out;
}

function defaultLog(level, message) {
  if (level === 'warn' || level === 'error') console.error(`[kars-mesh ${level}] ${message}`);
}

/** In-memory storage adapter; `set`/`delete` let a host apply `store`/`erase` commands. */
export function memoryStorage(initial) {
  const map = new Map(initial ? Object.entries(initial) : undefined);
  return {
    map,
    get(key) {
      return map.get(key);
    },
    list(prefix) {
      const keys = [];
      for (const k of map.keys()) if (k.startsWith(prefix)) keys.push(k);
      return keys.sort();
    },
    set(key, value) {
      map.set(key, value);
    },
    delete(key) {
      map.delete(key);
    },
  };
}

function toBytes(value, what) {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`${what} must return a Uint8Array`);
}

/**
 * Instantiate the core.
 * @returns {Promise<{ engine: object, toolkit: object }>}
 */
export async function loadCore({
  storage = memoryStorage(),
  random = defaultRandom,
  now = Date.now,
  log = defaultLog,
  getCoreModule = defaultGetCoreModule,
} = {}) {
  // The glue destructures these functions once at instantiation, so they are
  // fixed wrappers over the options. jco 1.11.2 keys imports by interface
  // name without the version, although its generated .d.ts shows
  // 'kars:mesh/host@0.1.0'.
  const host = {
    nowMs: () => {
      const t = now();
      return typeof t === 'bigint' ? t : BigInt(Math.floor(t));
    },
    randomBytes: (len) => {
      const bytes = toBytes(random(len), 'random');
      if (bytes.byteLength !== len) {
        throw new RangeError(`random(${len}) returned ${bytes.byteLength} bytes`);
      }
      return bytes;
    },
    storageGet: (key) => {
      const value = storage.get(key);
      return value == null ? undefined : toBytes(value, 'storage.get');
    },
    storageList: (prefix) => [...storage.list(prefix)],
    log: (level, message) => log(level, message),
  };
  const root = await instantiate(getCoreModule, { 'kars:mesh/host': host });
  return { engine: root.engine, toolkit: root.toolkit };
}
