// Loading the wasm core with host imports that never throw (see loadEngine).
// Shared by every place an engine runs: js-host/node-host.js (a scripted
// test core, on the main thread), js-host/engine-worker.js (Node's engine
// thread) and js-host/console/engine-worker-browser.js (a browser's Worker).
// No Node module: the CSPRNG is the platform's Web Crypto unless the caller
// passes its own (the Node host passes node:crypto's randomFillSync, pooled).

import { NodeError, StateDirError, errorText } from './node-error.js';
import { webRandom } from './random.js';

/** Standard base64 of bytes (the start event's state_key). */
export function bytesToBase64(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

/**
 * Load the core on a store ({get, list, stateKey()}), in whichever thread runs
 * the engine (node-host.js on the main thread, engine-worker.js in the
 * engine's own). Its host imports must never throw: a throw aborts the
 * core mid-call (Rust does not unwind). They record the fault instead and
 * answer something harmless; the event loop then discards that call's
 * commands and stops the node (takeHostFault).
 */
export async function loadEngine(store, loadCoreImpl, log, { random = webRandom } = {}) {
  let hostFault = null;
  const guard = (what, read, fallback) => (arg) => {
    try {
      return read(arg);
    } catch (e) {
      hostFault ??= new NodeError(`${what(arg)}: ${errorText(e)}`, { cause: e });
      return fallback(arg);
    }
  };
  let stateKeyB64;
  let core;
  try {
    const key = store.stateKey();
    stateKeyB64 = bytesToBase64(key);
    key.fill(0);
    core = await loadCoreImpl({
      storage: {
        get: guard((key) => `cannot read stored record ${JSON.stringify(key)}`, (key) => store.get(key), () => undefined),
        list: guard(() => 'cannot list stored records', (prefix) => store.list(prefix), () => []),
      },
      // On failure, bytes of the right length that are never used: the call's commands are dropped.
      random: guard(() => 'CSPRNG failed', (len) => random(len), (len) => new Uint8Array(Number.isSafeInteger(len) && len > 0 ? len : 0)),
      now: Date.now,
      log,
    });
  } catch (e) {
    if (e instanceof StateDirError || e?.name === 'StateDirError') throw e;
    throw new NodeError(`cannot load the kars-mesh core: ${errorText(e)}`, { cause: e, code: 'KARS_MESH_CORE_LOAD' });
  }
  return {
    core,
    takeHostFault() {
      const f = hostFault;
      hostFault = null;
      return f;
    },
    /** The state key for the start configuration, handed out once. */
    takeStateKey() {
      const k = stateKeyB64;
      stateKeyB64 = undefined;
      return k;
    },
  };
}
