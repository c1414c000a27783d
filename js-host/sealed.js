// The host's shape check of a sealed record (js-host/ENGINE.md, `store`):
// every record the core stores is sealed with the state key, and a host that
// is asked to store anything else refuses it. No Node module: the Node store
// (state-db.js, storage-fs.js) and the browser's (console/storage-idb.js)
// share it.

/** Seal format versions the core writes (src/crypto/seal.rs VERSION; 2 is coming). */
export const SEAL_VERSIONS = Object.freeze([1, 2]);
/** version(1) + nonce(12) + tag(16): the smallest sealed record (empty plaintext). */
export const MIN_SEALED_LEN = 1 + 12 + 16;

/**
 * Why `bytes` cannot be a sealed record, or undefined when it can. A shape
 * check only (the host has no key): the version byte and the minimum length.
 */
export function notSealedReason(bytes) {
  if (!(bytes instanceof Uint8Array)) return 'it is not a byte array';
  if (bytes.byteLength < MIN_SEALED_LEN) {
    return `it is ${bytes.byteLength} bytes, shorter than the ${MIN_SEALED_LEN} of the smallest sealed record`;
  }
  if (!SEAL_VERSIONS.includes(bytes[0])) {
    return `its first byte ${bytes[0]} is not a known seal version (${SEAL_VERSIONS.join(' or ')})`;
  }
  return undefined;
}

/** Thrown by a sealed-only `set`: the core asked to store something that is not sealed. */
export class NotSealedError extends Error {
  constructor(key, reason) {
    super(`refusing to store record ${JSON.stringify(key)}: it is not a sealed record (${reason}); nothing was written`);
    this.name = 'NotSealedError';
    this.code = 'KARS_MESH_NOT_SEALED';
  }
}
