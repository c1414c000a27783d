// (a) Our WebAssembly component in Node, through the project's loader
// (js-host/core.js → jco-transpiled glue) and the `toolkit` interface of
// wit/world.wit. Secrets stay inside the component; we only hold handles.
//
// Prints one JSON line: {impl, establish_us, chain1k_us, pingpong1k_us,
// chain64k_us, ..., detail:{...}, breakdown:{...}}.
//
// Headline figures use the raw toolkit calls (session-encrypt /
// session-decrypt: header + ciphertext bytes across the boundary), the
// counterpart of the SDK's SecureChannel.send / receive. The frame-level
// calls (session-encrypt-frame / session-decrypt-frame: complete relay
// `message` frame JSON, base64 inside) are measured too, so the share of time
// spent on the protocol framing rather than the crypto is visible.

import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { assert, bytesEqual, emit, measure, note, now, since } from './harness.mjs';

// Dev hook: KARS_BENCH_CORE=/path/to/module.js exporting loadCore() (default:
// the project's loader).
const loaderUrl = process.env.KARS_BENCH_CORE
  ? pathToFileURL(process.env.KARS_BENCH_CORE).href
  : new URL('../js-host/core.js', import.meta.url).href;

const tLoad = now();
const { loadCore } = await import(loaderUrl);
const core = await loadCore();
const loadMs = since(tLoad) / 1e6;
const { toolkit: tk } = core;
assert(tk && typeof tk.sessionInitiate === 'function', 'loadCore() returned a toolkit');

// ── identities ────────────────────────────────────────────────────────
const alice = tk.identityGenerate();
const bob = tk.identityGenerate();
const aliceDid = tk.identityDescribe(alice).did;
const bobDid = tk.identityDescribe(bob).did;
assert(/^did:mesh:[0-9a-f]{32}$/.test(aliceDid) && /^did:mesh:[0-9a-f]{32}$/.test(bobDid), `did:mesh DIDs (got ${aliceDid}, ${bobDid})`);

// Prekeys: toolkit.prekeysGenerate(bob, k) makes a fresh signed prekey and k
// one-time prekeys (one Ed25519 signature + k+1 X25519 keygens, NOT timed) and
// returns the registry PUT body. We turn it into k registry GET answers, one
// per OPK, as the registry would hand them out. A later prekeysGenerate call
// replaces the signed prekey, so bundles are only used from the latest call.
const OPK_CHUNK = 100;
function freshBundles(k, withOpk = true) {
  const put = JSON.parse(tk.prekeysGenerate(bob, withOpk ? k : 0));
  const base = { identity_key: put.identity_key, identity_key_ed: put.identity_key_ed, signed_pre_key: put.signed_pre_key };
  if (!withOpk) return Array.from({ length: k }, () => JSON.stringify({ ...base, one_time_pre_key: null }));
  assert(put.one_time_pre_keys.length === k, `prekeysGenerate gave ${k} OPKs`);
  return put.one_time_pre_keys.map((opk) => JSON.stringify({ ...base, one_time_pre_key: opk }));
}

/** Initiator (X3DH from the bundle + sender ratchet init) + responder. */
function establish(bundleJson) {
  const { session, establishmentJson } = tk.sessionInitiate(alice, bobDid, bundleJson);
  const resp = tk.sessionRespond(bob, aliceDid, establishmentJson);
  return [session, resp];
}

const enc = (s, pt) => tk.sessionEncrypt(s, pt);
const dec = (s, m) => tk.sessionDecrypt(s, m.header, m.ciphertext);

// ── sanity: the session really works (both directions, both paths) ───
{
  const [a, b] = establish(freshBundles(1)[0]);
  const m = new TextEncoder().encode('hello bob');
  assert(bytesEqual(dec(b, enc(a, m)), m), 'A→B raw');
  const r = new TextEncoder().encode('hello alice');
  assert(bytesEqual(dec(a, enc(b, r)), r), 'B→A raw');
  assert(bytesEqual(tk.sessionDecryptFrame(b, tk.sessionEncryptFrame(a, m)), m), 'A→B frame');
  tk.sessionDrop(a);
  tk.sessionDrop(b);
}

const results = { impl: 'component', load_ms: Math.round(loadMs * 10) / 10 };
const detail = {};

// 1. establishment. Timed per establishment: sessionInitiate (bundle JSON
// parse + base64url decode, SPK signature verify, ephemeral key, X3DH
// DH1..DH4, HKDF, sender ratchet init: keygen + DH + HKDF, establishment JSON
// out) + sessionRespond (JSON parse, DH1..DH4, HKDF, OPK consumed, receiver
// ratchet init). 4-DH with a fresh one-time prekey each time, as the SDK path.
// Not timed: prekey generation, building the GET-answer JSON, sessionDrop.
function establishBatch(n, withOpk) {
  let ns = 0;
  for (let done = 0; done < n; ) {
    const k = Math.min(OPK_CHUNK, n - done);
    const bundles = freshBundles(k, withOpk);
    const sessions = new Array(k);
    const t0 = now();
    for (let i = 0; i < k; i++) sessions[i] = establish(bundles[i]);
    ns += since(t0);
    const [a, b] = sessions[k - 1];
    const m = new Uint8Array([1, 2, 3]);
    assert(bytesEqual(dec(b, enc(a, m)), m), 'established session works');
    for (const [x, y] of sessions) {
      tk.sessionDrop(x);
      tk.sessionDrop(y);
    }
    done += k;
  }
  return ns;
}
note('component: establish');
detail.establish = measure((n) => establishBatch(n, true));
results.establish_us = detail.establish.us;
note('component: establish 3-DH (extra)');
detail.establish_3dh = measure((n) => establishBatch(n, false));
results.establish_3dh_us = detail.establish_3dh.us;

// Chains: A (initiator) sends, B decrypts; after B's first receive (its one
// DH step, untimed) everything is on A's one sending chain.
function chainBench(size, frame) {
  const [a, b] = establish(freshBundles(1)[0]);
  const pt = new Uint8Array(randomBytes(size));
  assert(bytesEqual(dec(b, enc(a, pt)), pt), 'first message');
  const r = measure(
    frame
      ? (n) => {
          let out;
          const t0 = now();
          for (let i = 0; i < n; i++) out = tk.sessionDecryptFrame(b, tk.sessionEncryptFrame(a, pt));
          const ns = since(t0);
          assert(bytesEqual(out, pt), `frame chain ${size}`);
          return ns;
        }
      : (n) => {
          let out;
          const t0 = now();
          for (let i = 0; i < n; i++) out = dec(b, enc(a, pt));
          const ns = since(t0);
          assert(bytesEqual(out, pt), `chain ${size}`);
          return ns;
        },
  );
  tk.sessionDrop(a);
  tk.sessionDrop(b);
  return r;
}

// Ping-pong: A→B, B→A; every message's receive is a DH ratchet step.
const pnOf = (header) => new DataView(header.buffer, header.byteOffset, header.byteLength).getUint32(32, false);
function pingpongBench(frame) {
  const [a, b] = establish(freshBundles(1)[0]);
  const pt = new Uint8Array(randomBytes(1024));
  const r = measure(
    frame
      ? (n) => {
          let x, y;
          const t0 = now();
          for (let i = 0; i < n; i++) {
            x = tk.sessionDecryptFrame(b, tk.sessionEncryptFrame(a, pt));
            y = tk.sessionDecryptFrame(a, tk.sessionEncryptFrame(b, pt));
          }
          const ns = since(t0);
          assert(bytesEqual(x, pt) && bytesEqual(y, pt), 'frame pingpong');
          return ns;
        }
      : (n) => {
          let x, y;
          const t0 = now();
          for (let i = 0; i < n; i++) {
            x = dec(b, enc(a, pt));
            y = dec(a, enc(b, pt));
          }
          const ns = since(t0);
          assert(bytesEqual(x, pt) && bytesEqual(y, pt), 'pingpong');
          return ns;
        },
  );
  // Every message after the first round carries pn = 1: the sender had sent
  // exactly one message on its previous chain, i.e. each message took a step.
  const m = enc(a, pt);
  assert(pnOf(m.header) === 1, `ping-pong: each message takes a DH step (pn=${pnOf(m.header)})`);
  dec(b, m);
  tk.sessionDrop(a);
  tk.sessionDrop(b);
  return r;
}

note('component: chain1k');
detail.chain1k = chainBench(1024, false);
results.chain1k_us = detail.chain1k.us;
note('component: pingpong1k');
detail.pingpong1k = pingpongBench(false);
results.pingpong1k_us = detail.pingpong1k.us;
note('component: chain64k');
detail.chain64k = chainBench(64 * 1024, false);
results.chain64k_us = detail.chain64k.us;

// ── A/B of the message AEAD's ChaCha20 ───────────────────────────────
// toolkit aead-seal / aead-open: 64 KiB sealed then opened (the AEAD alone,
// no ratchet), once with what messages use (in the shipped wasm32 build the
// hand-written simd128 ChaCha20; Poly1305 is the poly1305 crate's either way)
// and once with the chacha20poly1305 crate. Same key, nonce, 147-byte AD and
// boundary copies on both sides; the two must give the same bytes.
if (typeof tk.aeadSeal === 'function') {
  note('component: AEAD A/B (simd128 ChaCha20 vs the chacha20 crate)');
  const key = new Uint8Array(randomBytes(32));
  const nonce = new Uint8Array(randomBytes(12));
  const aad = new Uint8Array(randomBytes(147));
  const pt = new Uint8Array(randomBytes(64 * 1024));
  const ours = tk.aeadSeal('messages', key, nonce, aad, pt);
  const theirs = tk.aeadSeal('chacha20-crate', key, nonce, aad, pt);
  assert(bytesEqual(ours, theirs), 'simd128 and crate ChaCha20-Poly1305 give the same ciphertext and tag');
  assert(bytesEqual(tk.aeadOpen('chacha20-crate', key, nonce, aad, ours), pt), 'crate opens what simd128 sealed');
  const ab = (which) => measure((n) => {
    let out;
    const t0 = now();
    for (let i = 0; i < n; i++) out = tk.aeadOpen(which, key, nonce, aad, tk.aeadSeal(which, key, nonce, aad, pt));
    const ns = since(t0);
    assert(bytesEqual(out, pt), `aead ${which}`);
    return ns;
  });
  detail.aead64k_simd = ab('messages');
  detail.aead64k_crate = ab('chacha20-crate');
  results.aead64k_simd_us = detail.aead64k_simd.us;
  results.aead64k_crate_us = detail.aead64k_crate.us;
}

// ── where the time goes: frame-level calls vs raw calls ──────────────
note('component: frame-level path');
detail.frame_chain1k = chainBench(1024, true);
detail.frame_pingpong1k = pingpongBench(true);
detail.frame_chain64k = chainBench(64 * 1024, true);
results.frame_chain1k_us = detail.frame_chain1k.us;
results.frame_pingpong1k_us = detail.frame_pingpong1k.us;
results.frame_chain64k_us = detail.frame_chain64k.us;

// Per-call floor of the JS↔wasm glue: session-drop of a handle that does not
// exist (u32 in, nothing out, no work), and identity-describe (a record with
// two strings and two 32-byte lists out).
note('component: call floor');
const NO_SUCH_SESSION = 0xfffffff0;
detail.call_floor = measure((n) => {
  const t0 = now();
  for (let i = 0; i < n; i++) tk.sessionDrop(NO_SUCH_SESSION);
  return since(t0);
});
results.call_floor_us = detail.call_floor.us;
detail.describe = measure((n) => {
  const t0 = now();
  for (let i = 0; i < n; i++) tk.identityDescribe(alice);
  return since(t0);
});
results.describe_us = detail.describe.us;

const r3 = (x) => Math.round(x * 1000) / 1000;
const share = (frameUs, rawUs) => ({
  raw_us: rawUs,
  frame_us: frameUs,
  framing_us: r3(frameUs - rawUs),
  framing_fraction: r3((frameUs - rawUs) / frameUs),
});
results.breakdown = {
  chain1k: share(results.frame_chain1k_us, results.chain1k_us),
  pingpong1k: share(results.frame_pingpong1k_us, results.pingpong1k_us),
  chain64k: share(results.frame_chain64k_us, results.chain64k_us),
};

results.detail = detail;
emit(results);
