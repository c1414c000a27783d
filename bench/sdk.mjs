// (c) The reference AGT TypeScript SDK, npm @microsoft/agent-governance-sdk
// 4.0.0 (X3DH + Double Ratchet on @noble/curves, @noble/hashes,
// @noble/ciphers). Uses the SDK's own classes: X3DHKeyManager for the key
// material and SecureChannel.createSender / createReceiver / send / receive,
// which is exactly what the SDK's MeshClient.establishSession / acceptSession
// / send / frame handler call.
//
// Prints one JSON line: {impl, establish_us, chain1k_us, pingpong1k_us,
// chain64k_us, ..., detail:{...}}.

import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import sdk from '@microsoft/agent-governance-sdk';
import { assert, bytesEqual, emit, measure, note, now, since } from './harness.mjs';

const { X3DHKeyManager, SecureChannel, MeshClient } = sdk;
const require = createRequire(import.meta.url);
const sdkVersion = require('@microsoft/agent-governance-sdk/package.json').version;

// ── identities ────────────────────────────────────────────────────────
// Ed25519 seed + public key from node:crypto (keygen is not timed), DID per
// the wire spec: did:mesh: + first 32 hex chars of SHA-256(Ed25519 public).
function newAgent() {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const seed = new Uint8Array(Buffer.from(jwk.d, 'base64url'));
  const pub = new Uint8Array(Buffer.from(jwk.x, 'base64url'));
  const did = `did:mesh:${createHash('sha256').update(pub).digest('hex').slice(0, 32)}`;
  return { km: new X3DHKeyManager(seed, pub), did };
}

const alice = newAgent();
const bob = newAgent();
const enc = new TextEncoder();
// Channel AD as MeshClient builds it: "<initiatorDID>|<responderDID>" on both
// sides (the SDK then appends the 64-byte X3DH AD: 147 bytes in all).
const AD = enc.encode(`${alice.did}|${bob.did}`);
assert(AD.length === 83, 'channel AD prefix is 83 bytes');

// Bob publishes a signed prekey once; a pool of one-time prekeys per batch.
bob.km.generateSignedPreKey();

/** One X3DH establishment, 4-DH with a fresh one-time prekey. */
function establish(bundle) {
  const [a, est] = SecureChannel.createSender(alice.km, bundle, AD);
  const b = SecureChannel.createReceiver(bob.km, est, AD);
  return [a, b];
}

function freshBundles(n) {
  return bob.km.generateOneTimePreKeys(n).map((k) => bob.km.getPublicBundle(k.keyId));
}

// ── sanity: the session really works (both directions) ───────────────
{
  const [a, b] = establish(freshBundles(1)[0]);
  const m = enc.encode('hello bob');
  assert(bytesEqual(b.receive(a.send(m)), m), 'A→B');
  const r = enc.encode('hello alice');
  assert(bytesEqual(a.receive(b.send(r)), r), 'B→A');
}

const results = { impl: 'sdk', sdk_version: sdkVersion };
const detail = {};

// 1. establishment: initiator (verify SPK signature, ephemeral key, 4 DH,
// HKDF, ratchet sender init: 1 keygen + 1 DH + HKDF) + responder (4 DH, HKDF,
// OPK consumed, ratchet receiver init). Fresh OPK per establishment; the OPK
// generation and getPublicBundle() happen before the timed region.
note('sdk: establish');
detail.establish = measure((n) => {
  const bundles = freshBundles(n);
  const t0 = now();
  for (let i = 0; i < n; i++) establish(bundles[i]);
  return since(t0);
});
results.establish_us = detail.establish.us;

// Extra: 3-DH establishment (bundle without a one-time prekey).
note('sdk: establish 3-DH (extra)');
detail.establish_3dh = measure((n) => {
  const bundle = bob.km.getPublicBundle();
  const t0 = now();
  for (let i = 0; i < n; i++) establish(bundle);
  return since(t0);
});
results.establish_3dh_us = detail.establish_3dh.us;

function chainBench(size) {
  const [a, b] = establish(freshBundles(1)[0]);
  const pt = new Uint8Array(randomBytes(size));
  // First message makes B take its initial DH step; everything after is on
  // one sending chain (A→B), no DH work.
  assert(bytesEqual(b.receive(a.send(pt)), pt), 'first message');
  return measure((n) => {
    let out;
    const t0 = now();
    for (let i = 0; i < n; i++) out = b.receive(a.send(pt));
    const ns = since(t0);
    assert(bytesEqual(out, pt), `chain ${size}`);
    return ns;
  });
}

// 2. 1 KiB on one chain: encrypt (A) + decrypt (B) per message.
note('sdk: chain1k');
detail.chain1k = chainBench(1024);
results.chain1k_us = detail.chain1k.us;

// 3. 1 KiB ping-pong: A→B then B→A; every receive is a DH ratchet step
// (2 X25519 DH + 1 keygen + 2 HKDF), so a round trip = 2 encrypts, 2 decrypts,
// 2 DH steps.
note('sdk: pingpong1k');
{
  const [a, b] = establish(freshBundles(1)[0]);
  const pt = new Uint8Array(randomBytes(1024));
  detail.pingpong1k = measure((n) => {
    let x, y;
    const t0 = now();
    for (let i = 0; i < n; i++) {
      x = b.receive(a.send(pt));
      y = a.receive(b.send(pt));
    }
    const ns = since(t0);
    assert(bytesEqual(x, pt) && bytesEqual(y, pt), 'pingpong');
    return ns;
  });
  assert(a.ratchet.state.previousSendChainLength === 1, 'every message took a DH step');
}
results.pingpong1k_us = detail.pingpong1k.us;

// 4. 64 KiB on one chain.
note('sdk: chain64k');
detail.chain64k = chainBench(64 * 1024);
results.chain64k_us = detail.chain64k.us;

// Extra (not a target): the same 1 KiB / 64 KiB chain through MeshClient's
// own wire framing — the frame object MeshClient.send builds (randomUUID,
// ISO timestamp, base64 via MeshClient.prototype.uint8ToBase64) serialised
// with JSON.stringify, and the receive side's JSON.parse + base64ToUint8 —
// so it can be compared with the component's frame-level calls.
const b64 = MeshClient.prototype.uint8ToBase64;
const unb64 = MeshClient.prototype.base64ToUint8;
function frameChainBench(size) {
  const [a, b] = establish(freshBundles(1)[0]);
  const pt = new Uint8Array(randomBytes(size));
  assert(bytesEqual(b.receive(a.send(pt)), pt), 'first message');
  const sendFrame = () => {
    const e = a.send(pt);
    return JSON.stringify({
      v: 1,
      type: 'message',
      from: alice.did,
      to: bob.did,
      id: randomUUID(),
      ts: new Date().toISOString(),
      header: { dh: b64(e.header.dhPublicKey), pn: e.header.previousChainLength, n: e.header.messageNumber },
      ciphertext: b64(e.ciphertext),
    });
  };
  const recvFrame = (text) => {
    const f = JSON.parse(text);
    return b.receive({
      header: { dhPublicKey: unb64(f.header.dh), previousChainLength: f.header.pn, messageNumber: f.header.n },
      ciphertext: unb64(f.ciphertext),
    });
  };
  return measure((n) => {
    let out;
    const t0 = now();
    for (let i = 0; i < n; i++) out = recvFrame(sendFrame());
    const ns = since(t0);
    assert(bytesEqual(out, pt), `frame chain ${size}`);
    return ns;
  });
}
note('sdk: frame chain1k / chain64k (extra)');
detail.frame_chain1k = frameChainBench(1024);
detail.frame_chain64k = frameChainBench(64 * 1024);
results.frame_chain1k_us = detail.frame_chain1k.us;
results.frame_chain64k_us = detail.frame_chain64k.us;

results.detail = detail;
emit(results);
