// The host's shape check of a sealed record (js-host/ENGINE.md, `store`):
// every record the core stores is sealed with the state key, and a host that
// is asked to store anything else refuses it. No Node module: the Node store
// (state-db.js, storage-fs.js) and the browser's (console/storage-idb.js)
// share it.

/**
 * Seal format versions the core writes (src/crypto/seal.rs): 1 and 2 sealed
 * whole; 3 a sealed head followed by bytes that are already ciphertext end to
 * end (a file chunk's frame in the sender's outbox), stored as they are.
 */
export const SEAL_VERSIONS = Object.freeze([1, 2, 3]);
/** version(1) + nonce(12) + tag(16): the smallest sealed record (empty plaintext). */
export const MIN_SEALED_LEN = 1 + 12 + 16;
/** Version 3: version(1) + the sealed head's length (u32 LE) + nonce(12) + tag(16). */
const MIN_TRAILER_LEN = 1 + 4 + 12 + 16;
/** Only an outbox entry keeps a trailer, and it is a relay `message` frame (src/wire/frames.rs). */
const TRAILER_KEY_PREFIX = 'outbox/';
const TRAILER_START = Array.from('{"v":1,"type":"message",', (c) => c.charCodeAt(0));

/**
 * Why `bytes` cannot be a sealed record, or undefined when it can. A shape
 * check only (the host has no key): the version byte and the minimum length;
 * for version 3, that its head fits and (given the record's `key`) that it is
 * an outbox entry whose trailer is an encrypted `message` frame, so nothing
 * else can reach the disk unsealed as a "trailer".
 */
export function notSealedReason(bytes, key) {
  if (!(bytes instanceof Uint8Array)) return 'it is not a byte array';
  if (bytes.byteLength < MIN_SEALED_LEN) {
    return `it is ${bytes.byteLength} bytes, shorter than the ${MIN_SEALED_LEN} of the smallest sealed record`;
  }
  if (!SEAL_VERSIONS.includes(bytes[0])) {
    return `its first byte ${bytes[0]} is not a known seal version (${SEAL_VERSIONS.join(', ')})`;
  }
  if (bytes[0] === 3) {
    if (bytes.byteLength < MIN_TRAILER_LEN) return `it is ${bytes.byteLength} bytes, shorter than the ${MIN_TRAILER_LEN} of the smallest sealed record with a trailer`;
    const head = new DataView(bytes.buffer, bytes.byteOffset + 1, 4).getUint32(0, true);
    if (head < 12 + 16 || head > bytes.byteLength - 5) return `its sealed head is said to be ${head} bytes, which does not fit a sealed record of ${bytes.byteLength}`;
    if (key !== undefined && !String(key).startsWith(TRAILER_KEY_PREFIX)) return `only an outbox entry keeps an unsealed trailer (format 3), and this is ${JSON.stringify(String(key).slice(0, 64))}`;
    const at = 5 + head;
    if (bytes.byteLength - at < TRAILER_START.length || TRAILER_START.some((c, i) => bytes[at + i] !== c)) {
      return 'its unsealed trailer (format 3) is not an encrypted message frame';
    }
  }
  return undefined;
}

/** The longest storage key a store takes, in UTF-8 bytes (the 0.1.0 file store's limit too). */
export const MAX_KEY_BYTES = 1024;
const utf8 = new TextEncoder();

/** A storage key a store takes, or a TypeError/RangeError saying why not. */
export function checkKey(key) {
  if (typeof key !== 'string') throw new TypeError('storage key must be a string');
  const n = utf8.encode(key).length;
  if (n > MAX_KEY_BYTES) throw new RangeError(`storage key too long (${n} bytes, max ${MAX_KEY_BYTES})`);
}

/**
 * What every store's `set` checks before writing: the key, a byte array, and
 * (`sealedOnly`, what the real core's stores use) a sealed record's shape.
 */
export function checkRecord(key, bytes, sealedOnly) {
  checkKey(key);
  if (!(bytes instanceof Uint8Array)) throw new TypeError('storage value must be a Uint8Array');
  if (sealedOnly) {
    const why = notSealedReason(bytes, key);
    if (why) throw new NotSealedError(key, why);
  }
}

/** Thrown by a sealed-only `set`: the core asked to store something that is not sealed. */
export class NotSealedError extends Error {
  constructor(key, reason) {
    super(`refusing to store record ${JSON.stringify(key)}: it is not a sealed record (${reason}); nothing was written`);
    this.name = 'NotSealedError';
    this.code = 'KARS_MESH_NOT_SEALED';
  }
}
