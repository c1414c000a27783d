// Loader for the kars-mesh wasm core (the WebAssembly component transpiled by
// `jco transpile --instantiation async --no-wasi-shim` into ./gen/).
//
//   import { loadCore } from './core.js';
//   const { engine, toolkit, memoryBytes } = await loadCore({ storage, random, now, log });
//   memoryBytes()  -> the core's linear memory size in bytes, now
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
import { webRandom as defaultRandom } from './random.js';

/**
 * The core's linear memory must stay below 2 GiB. Upstream bug (to report to
 * bytecodealliance/jco): the glue that jco 1.11.2 `transpile` generates reads
 * every pointer the core returns, and every pointer argument of an import, as
 * a SIGNED 32-bit number: `dataView(memory0).getInt32(ret + 0, true)` (e.g.
 * js-host/gen/kars_mesh.component.js around line 441, the `base49`/`ptr28`
 * reads that lift engine.handle's `list<command>`; and the i32 parameters of
 * the host imports). An address at or past 2^31 comes out negative, and
 * `memory0.buffer.slice(ptr, ptr + len)` counts a negative start from the END
 * of the buffer, so the glue silently copies another region of memory
 * (observed: decrypted plaintext written to disk as a `store` record instead
 * of the sealed bytes). Pointers must be read with getUint32 (or `>>> 0`).
 * The build links the core with --max-memory=1 GiB (scripts/build.sh); this
 * loader also refuses to go on, whatever the jco version or the build, once
 * the memory is larger than 2^31 - 1 bytes: a call that leaves it that large
 * throws CoreMemoryError instead of returning what the glue lifted, and every
 * later call throws too (the instance is dead).
 */
export const MAX_SAFE_CORE_MEMORY = 2 ** 31 - 1;

export class CoreMemoryError extends Error {
  constructor(bytes, limit) {
    super(
      `fatal: the kars-mesh core's linear memory reached ${bytes} bytes (limit ${limit}); ` +
        'the jco 1.11.2 glue reads pointers as signed 32-bit numbers and would copy the wrong memory ' +
        '(for example plaintext instead of sealed records) past 2^31 - 1 bytes, so this engine is stopped. ' +
        'Rebuild the core with scripts/build.sh (which caps its memory at 1 GiB) and restart',
    );
    this.name = 'CoreMemoryError';
    this.code = 'KARS_MESH_CORE_MEMORY';
    this.bytes = bytes;
  }
}

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
 * A getCoreModule that compiles each core module once and hands the same
 * compiled module to every instance made with it (the engine and the
 * warm-up's throwaway pair: what V8 optimizes for one serves the others).
 */
export function sharedCoreModules(get = defaultGetCoreModule) {
  const compiled = new Map();
  return (name) => {
    if (!compiled.has(name)) compiled.set(name, get(name));
    return compiled.get(name);
  };
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
 * @returns {Promise<{ engine: object, toolkit: object, memoryBytes: () => number }>}
 * Every engine/toolkit call throws CoreMemoryError (fatal) if the core's
 * memory is larger than 2^31 - 1 bytes after it (see MAX_SAFE_CORE_MEMORY).
 */
export async function loadCore({
  storage = memoryStorage(),
  random = defaultRandom,
  now = Date.now,
  log = defaultLog,
  getCoreModule = defaultGetCoreModule,
  // Tests only: a lower ceiling than MAX_SAFE_CORE_MEMORY, to see the guard work.
  memoryLimit = MAX_SAFE_CORE_MEMORY,
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
  // The glue keeps the core's memory to itself; the core instance that
  // exports a WebAssembly.Memory is seen here as it is instantiated (jco's
  // optional third argument to instantiate), without touching gen/.
  const memories = [];
  const instantiateCore = async (module, imports) => {
    const result = await WebAssembly.instantiate(module, imports);
    const instance = result instanceof WebAssembly.Instance ? result : result.instance;
    for (const v of Object.values(instance.exports)) if (v instanceof WebAssembly.Memory) memories.push(v);
    return instance;
  };
  const root = await instantiate(getCoreModule, { 'kars:mesh/host': host }, instantiateCore);
  if (memories.length !== 1) throw new Error(`expected the core to export one memory, found ${memories.length}`);
  const [memory] = memories;
  const memoryBytes = () => memory.buffer.byteLength;
  let dead = null;
  const check = () => {
    const bytes = memoryBytes();
    if (bytes > memoryLimit) dead ??= new CoreMemoryError(bytes, memoryLimit);
    if (dead) throw dead;
  };
  check();
  const guard = (iface) => {
    const out = {};
    for (const [name, fn] of Object.entries(iface ?? {})) {
      out[name] = typeof fn !== 'function' ? fn : (...args) => {
        if (dead) throw dead;
        let value;
        try {
          value = fn(...args);
        } catch (e) {
          check(); // an oversized memory explains the failure better than the glue's error
          throw e;
        }
        check(); // what the glue lifted past 2 GiB may be another region's bytes: never return it
        return value;
      };
    }
    return out;
  };
  return { engine: guard(root.engine), toolkit: guard(root.toolkit), memoryBytes };
}
