// The host's CSPRNG for the core's `random-bytes` import, pooled. No Node
// module here: the browser's engine worker uses it too.

/**
 * A pooled CSPRNG over `fill(bytes)` (Web Crypto's getRandomValues, Node's
 * randomFillSync), drawn 4 KiB at a time. One source call costs 2 to 5 µs
 * whatever its size, and the core asks for a few bytes many times per
 * message (nonces, frame ids, record seals), so pooling removes most of that
 * cost. Bytes handed out are wiped from the pool; the pool is as good as its
 * source. Larger requests go to the source directly.
 * @param {(out: Uint8Array) => void} fill  fills at most 65,536 bytes per call
 * @returns {(len: number) => Uint8Array}
 */
export function pooledRandom(fill) {
  const POOL_SIZE = 4096;
  const pool = new Uint8Array(POOL_SIZE);
  let poolOff = POOL_SIZE;
  return (len) => {
    const out = new Uint8Array(len);
    if (len > POOL_SIZE / 4) {
      for (let off = 0; off < len; off += 65536) fill(out.subarray(off, Math.min(len, off + 65536)));
      return out;
    }
    if (poolOff + len > POOL_SIZE) {
      fill(pool);
      poolOff = 0;
    }
    out.set(pool.subarray(poolOff, poolOff + len));
    pool.fill(0, poolOff, poolOff + len);
    poolOff += len;
    return out;
  };
}

/** Web Crypto's CSPRNG (getRandomValues: at most 65,536 bytes per call), pooled. */
export const webRandom = pooledRandom((out) => globalThis.crypto.getRandomValues(out));
