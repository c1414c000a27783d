// `node:crypto` for the browser runs of Node test files: the calls
// tests/vectors.component.test.mjs makes, on @noble (an implementation
// independent of the component's, as OpenSSL is in Node).
import { ed25519, x25519 } from '@noble/curves/ed25519.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';

const B = () => globalThis.Buffer;

export function randomBytes(n) {
  const out = B().alloc(n);
  for (let off = 0; off < n; off += 65536) crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  return out;
}

export function createHash(alg) {
  if (alg !== 'sha256') throw new Error(`node:crypto shim: no hash ${alg}`);
  const parts = [];
  const h = {
    update(data, encoding) {
      parts.push(typeof data === 'string' ? B().from(data, encoding ?? 'utf8') : data);
      return h;
    },
    digest(encoding) {
      const out = B().from(sha256(B().concat(parts)));
      return encoding ? out.toString(encoding) : out;
    },
  };
  return h;
}

const X25519_PKCS8_PREFIX = '302e020100300506032b656e04220420';

/** An X25519 private key from its PKCS#8 DER (the only kind the vectors use). */
export function createPrivateKey({ key, format, type }) {
  const der = B().from(key);
  if (format !== 'der' || type !== 'pkcs8' || der.length !== 48 || der.subarray(0, 16).toString('hex') !== X25519_PKCS8_PREFIX) {
    throw new Error('node:crypto shim: only X25519 PKCS#8 DER private keys');
  }
  return { kind: 'x25519-private', raw: der.subarray(16) };
}

/** The public key of an X25519 private key, or an Ed25519 public key from a JWK. */
export function createPublicKey(input) {
  if (input?.kind === 'x25519-private') {
    const pub = x25519.getPublicKey(input.raw);
    return { kind: 'x25519-public', raw: pub, export: () => ({ kty: 'OKP', crv: 'X25519', x: B().from(pub).toString('base64url') }) };
  }
  const jwk = input?.key;
  if (input?.format === 'jwk' && jwk?.kty === 'OKP' && jwk.crv === 'Ed25519') return { kind: 'ed25519-public', raw: B().from(jwk.x, 'base64url') };
  throw new Error('node:crypto shim: unsupported public key');
}

export function verify(alg, message, key, signature) {
  if (alg !== null || key?.kind !== 'ed25519-public') throw new Error('node:crypto shim: only Ed25519 verify');
  return ed25519.verify(new Uint8Array(signature), new Uint8Array(message), key.raw);
}

export function createCipheriv(alg, key, nonce, { authTagLength = 16 } = {}) {
  if (alg !== 'chacha20-poly1305' || authTagLength !== 16) throw new Error(`node:crypto shim: no cipher ${alg}`);
  let aad = new Uint8Array(0);
  let sealed = null;
  return {
    setAAD(a) {
      aad = new Uint8Array(a);
    },
    update(pt) {
      sealed = chacha20poly1305(new Uint8Array(key), new Uint8Array(nonce), aad).encrypt(new Uint8Array(pt));
      return B().from(sealed.subarray(0, sealed.length - 16));
    },
    final() {
      return B().alloc(0);
    },
    getAuthTag() {
      return B().from(sealed.subarray(sealed.length - 16));
    },
  };
}

export default { randomBytes, createHash, createPrivateKey, createPublicKey, verify, createCipheriv };
