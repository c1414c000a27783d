// A small Buffer for the browser runs of Node test files (tests/browser/):
// the encodings those files use (hex, base64, base64url, utf8, latin1),
// from/concat/alloc, and toString. Installed as globalThis.Buffer.

const enc = new TextEncoder();
const dec = new TextDecoder();

function fromBase64(s) {
  const clean = String(s).replace(/[\s=]/g, '').replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(clean + '='.repeat((4 - (clean.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toBase64(u8) {
  let bin = '';
  for (let i = 0; i < u8.length; i += 0x8000) bin += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(bin);
}

export class Buffer extends Uint8Array {
  static from(value, encoding) {
    if (typeof value === 'string') {
      switch (encoding ?? 'utf8') {
        case 'utf8':
        case 'utf-8':
          return Buffer.wrap(enc.encode(value));
        case 'hex': {
          const n = value.length >> 1;
          const out = new Buffer(n);
          for (let i = 0; i < n; i++) out[i] = parseInt(value.substr(i * 2, 2), 16);
          return out;
        }
        case 'base64':
        case 'base64url':
          return Buffer.wrap(fromBase64(value));
        case 'latin1':
        case 'binary': {
          const out = new Buffer(value.length);
          for (let i = 0; i < value.length; i++) out[i] = value.charCodeAt(i) & 0xff;
          return out;
        }
        default:
          throw new TypeError(`Buffer shim: unknown encoding ${encoding}`);
      }
    }
    if (value instanceof ArrayBuffer) return new Buffer(value.slice(0));
    if (ArrayBuffer.isView(value)) {
      const out = new Buffer(value.byteLength);
      out.set(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
      return out;
    }
    if (Array.isArray(value)) return Buffer.wrap(Uint8Array.from(value));
    throw new TypeError('Buffer shim: unsupported value');
  }

  static wrap(u8) {
    return new Buffer(u8.buffer, u8.byteOffset, u8.byteLength);
  }

  static alloc(n, fill = 0) {
    return new Buffer(n).fill(fill);
  }

  static concat(list) {
    const total = list.reduce((n, b) => n + b.length, 0);
    const out = new Buffer(total);
    let off = 0;
    for (const b of list) {
      out.set(b, off);
      off += b.length;
    }
    return out;
  }

  static isBuffer(v) {
    return v instanceof Buffer;
  }

  toString(encoding = 'utf8') {
    const u8 = new Uint8Array(this.buffer, this.byteOffset, this.byteLength);
    switch (encoding) {
      case 'utf8':
      case 'utf-8':
        return dec.decode(u8);
      case 'hex':
        return Array.from(u8, (b) => b.toString(16).padStart(2, '0')).join('');
      case 'base64':
        return toBase64(u8);
      case 'base64url':
        return toBase64(u8).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
      case 'latin1':
      case 'binary':
        return Array.from(u8, (b) => String.fromCharCode(b)).join('');
      default:
        throw new TypeError(`Buffer shim: unknown encoding ${encoding}`);
    }
  }
}

globalThis.Buffer = Buffer;
