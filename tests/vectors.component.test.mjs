// Golden vectors (tests/fixtures/vectors.json, the golden data docs/spec/agentmesh-wire.md cites)
// checked against the BUILT component through js-host/core.js.
// Needs `npm run build` first (js-host/gen/).
//
// Randomness is scripted through the `random` host import: each request must
// match the next scripted length exactly, and every script must be used up.
// RNG contract of the toolkit:
//   identity-generate: 32 (seed)      prekeys-generate(id, n): 32 (SPK) + n x 32 (OPKs)
//   session-initiate: 32 (EK) + 32 (first ratchet key)    session-respond: nothing
//   session-decrypt: nothing (a new peer key takes the receiving half of the DH step)
//   session-encrypt: 32 (new ratchet key: the sending half of a DH step a received
//     message left owing, drawn by the first send after it), then 12 (nonce)
// session-encrypt-frame / seal are not in the contract: those tests run the RNG
// in "lenient" mode (unscripted requests get CSPRNG bytes and are recorded).

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import crypto from 'node:crypto';

const V = JSON.parse(readFileSync(new URL('./fixtures/vectors.json', import.meta.url), 'utf8'));
const AB = V.alice_bob;
const TS = AB.timestamp_text;
const NOW = Date.parse(TS);

let loadCore;
before(async () => {
  try {
    ({ loadCore } = await import('../js-host/core.js'));
  } catch (e) {
    throw new Error(`cannot load js-host/core.js or js-host/gen/ (run 'npm run build' first): ${e.message}`);
  }
});

// ------------------------------------------------------------------ helpers
const hex = (u8) => Buffer.from(u8).toString('hex');
const fromHex = (h) => new Uint8Array(Buffer.from(h, 'hex'));
const utf8 = (s) => new Uint8Array(Buffer.from(s, 'utf8'));
const text = (u8) => Buffer.from(u8).toString('utf8');
const b64url = (h) => Buffer.from(h, 'hex').toString('base64url');
const STD_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function x25519Public(privHex) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b656e04220420', 'hex'), Buffer.from(privHex, 'hex')]);
  const priv = crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  return Buffer.from(crypto.createPublicKey(priv).export({ format: 'jwk' }).x, 'base64url').toString('hex');
}

function ed25519Verify(pubHex, msg, sigHex) {
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(pubHex) }, format: 'jwk' });
  return crypto.verify(null, Buffer.from(msg), key, Buffer.from(sigHex, 'hex'));
}

/** Scripted host RNG: a queue of exact byte strings. */
function scriptedRng() {
  const queue = [];
  const drawn = []; // {label, len, bytes}
  let problem = null;
  const rng = (len) => {
    if (queue.length === 0) {
      if (rng.lenient) {
        const bytes = new Uint8Array(crypto.randomBytes(len));
        drawn.push({ label: '(lenient)', len, bytes });
        return bytes;
      }
      problem ??= `core asked for ${len} random bytes but nothing is scripted`;
      throw new Error(problem);
    }
    const { label, bytes } = queue.shift();
    if (bytes.length !== len) {
      problem ??= `core asked for ${len} random bytes where the script has ${bytes.length} (${label})`;
      throw new Error(problem);
    }
    drawn.push({ label, len, bytes });
    return bytes;
  };
  rng.lenient = false;
  rng.drawn = drawn;
  rng.push = (label, h) => queue.push({ label, bytes: fromHex(h) });
  rng.assertUsedUp = (what) => {
    assert.equal(problem, null, `${what}: ${problem}`);
    assert.deepEqual(queue.map((q) => q.label), [], `${what}: scripted random bytes not consumed`);
  };
  rng.takeDrawn = () => drawn.splice(0);
  return rng;
}

async function freshCore() {
  const rng = scriptedRng();
  const logs = [];
  const core = await loadCore({ random: rng, now: () => NOW, log: (level, message) => logs.push(`${level}: ${message}`) });
  return { ...core, rng, logs };
}

/** Expect a toolkit call to throw jco's ComponentError (result err). */
function assertRejects(fn, what) {
  let threw = null;
  try {
    fn();
  } catch (e) {
    threw = e;
  }
  assert.ok(threw, `${what}: expected an error, the call succeeded`);
  assert.equal(typeof threw.payload, 'string', `${what}: expected a result err (ComponentError with a string payload), got ${threw}`);
  return threw.payload;
}

function bobBundleJson() {
  const bp = AB.bob_prekeys;
  return JSON.stringify({
    identity_key: AB.bob.x25519_identity_public_b64url,
    identity_key_ed: AB.bob.ed25519_public_b64url,
    signed_pre_key: { key_id: bp.spk_key_id, public_key: b64url(bp.spk_public), signature: b64url(bp.spk_signature) },
    one_time_pre_key: { key_id: bp.opk_key_id, public_key: b64url(bp.opk_public) },
  });
}

/**
 * The Alice/Bob walk-through up to a stage, each step asserted against the
 * vectors. Stages: 'identities', 'prekeys', 'x3dh', 'msg0', 'respond', 'msg1'.
 */
async function aliceBob(until) {
  const stages = ['identities', 'prekeys', 'x3dh', 'msg0', 'respond', 'msg1'];
  const upTo = stages.indexOf(until);
  assert.ok(upTo >= 0, `unknown stage ${until}`);
  const c = await freshCore();
  const { toolkit: tk, rng } = c;
  const s = { c, tk, rng };

  s.alice = tk.identityImport(fromHex(AB.alice.ed25519_seed));
  s.bob = tk.identityImport(fromHex(AB.bob.ed25519_seed));
  rng.assertUsedUp('identity-import');
  if (upTo < 1) return s;

  rng.push('bob spk_private', AB.bob_prekeys.spk_private);
  rng.push('bob opk_private', AB.bob_prekeys.opk_private);
  s.prekeyBody = tk.prekeysGenerate(s.bob, 1);
  rng.assertUsedUp('prekeys-generate(bob, 1)');
  if (upTo < 2) return s;

  rng.push('alice_ek_private', AB.x3dh.alice_ek_private);
  rng.push('alice_dhs_private', AB.ratchet.alice_dhs_private);
  s.initiated = tk.sessionInitiate(s.alice, AB.bob.did_text, bobBundleJson());
  rng.assertUsedUp('session-initiate');
  s.aliceSess = s.initiated.session;
  if (upTo < 3) return s;

  rng.push('msg0.nonce', AB.msg0.nonce);
  s.msg0 = tk.sessionEncrypt(s.aliceSess, utf8(AB.msg0.plaintext_text));
  rng.assertUsedUp('session-encrypt msg0');
  if (upTo < 4) return s;

  s.bobSess = tk.sessionRespond(s.bob, AB.alice.did_text, AB.x3dh.establishment_text);
  rng.assertUsedUp('session-respond (takes no randomness)');
  s.msg0Plain = tk.sessionDecrypt(s.bobSess, fromHex(AB.msg0.header40), fromHex(AB.msg0.ciphertext));
  rng.assertUsedUp('session-decrypt msg0 (receiving half of the DH step: no randomness)');
  if (upTo < 5) return s;

  rng.push('bob_dhs_private', AB.ratchet.bob_dhs_private);
  rng.push('msg1.nonce', AB.msg1.nonce);
  s.msg1 = tk.sessionEncrypt(s.bobSess, utf8(AB.msg1.plaintext_text));
  rng.assertUsedUp('session-encrypt msg1 (the sending half of the DH step, then the nonce)');
  s.aliceNextRatchetPriv = '5a'.repeat(32);
  s.msg1Plain = tk.sessionDecrypt(s.aliceSess, fromHex(AB.msg1.header40), fromHex(AB.msg1.ciphertext));
  rng.assertUsedUp('session-decrypt msg1 (receiving half of the DH step: no randomness)');
  return s;
}

// --------------------------------------------------------------- identities
for (const who of ['alice', 'bob']) {
  test(`alice_bob.${who}: identity-import + identity-describe`, async () => {
    const { toolkit: tk, rng } = await freshCore();
    const v = AB[who];
    const id = tk.identityImport(fromHex(v.ed25519_seed));
    const info = tk.identityDescribe(id);
    assert.equal(info.did, v.did_text, 'did');
    assert.equal(info.amid, v.amid_text, 'amid');
    assert.equal(hex(info.ed25519Public), v.ed25519_public, 'ed25519 public');
    assert.equal(hex(info.x25519Public), v.x25519_identity_public, 'x25519 identity public');
    rng.assertUsedUp('identity-import must take no randomness');
  });
}

test('identity-generate takes its 32-byte seed from the host RNG', async () => {
  const { toolkit: tk, rng } = await freshCore();
  rng.push('seed (alice)', AB.alice.ed25519_seed);
  const id = tk.identityGenerate();
  rng.assertUsedUp('identity-generate');
  const info = tk.identityDescribe(id);
  assert.equal(info.did, AB.alice.did_text);
  assert.equal(info.amid, AB.alice.amid_text);
});

test('identity-import rejects a seed that is not 32 bytes', async () => {
  const { toolkit: tk } = await freshCore();
  assertRejects(() => tk.identityImport(new Uint8Array(31)), '31-byte seed');
  assertRejects(() => tk.identityImport(new Uint8Array(33)), '33-byte seed');
  assertRejects(() => tk.identityImport(new Uint8Array(0)), 'empty seed');
});

for (const name of ['kars_identity_seed', 'pinned_agent_identity_app_id']) {
  test(`identity_seed_env.${name}: identity-import of the seed`, async () => {
    const v = V.identity_seed_env[name];
    if (v.seed_input_text) {
      // The vector itself: seed = SHA-256(seed_input_text), input = prefix + trimmed env value.
      assert.equal(v.seed_input_text, `kars-mesh-identity-v1:${v.env_value_text.trim()}`);
      assert.equal(crypto.createHash('sha256').update(v.seed_input_text, 'utf8').digest('hex'), v.ed25519_seed);
    } else {
      assert.equal(v.env_value_text, v.ed25519_seed);
    }
    const { toolkit: tk } = await freshCore();
    const info = tk.identityDescribe(tk.identityImport(fromHex(v.ed25519_seed)));
    assert.equal(info.did, v.did_text, 'did');
    assert.equal(info.amid, v.amid_text, 'amid');
    assert.equal(hex(info.ed25519Public), v.ed25519_public, 'ed25519 public');
  });
}

test('identity-drop: a dropped handle is no longer usable', async () => {
  const { toolkit: tk } = await freshCore();
  const id = tk.identityImport(fromHex(AB.alice.ed25519_seed));
  tk.identityDrop(id);
  assertRejects(() => tk.identityDescribe(id), 'describe after drop');
});

// ---------------------------------------------------------------- alice_auth
test('alice_bob.alice_auth: connect frame, registration body, Authorization header', async () => {
  const { toolkit: tk, rng } = await freshCore();
  const a = tk.identityImport(fromHex(AB.alice.ed25519_seed));
  const v = AB.alice_auth;
  assert.equal(tk.connectFrame(a, TS), v.connect_frame_text, 'connect_frame_text');
  const capabilities = JSON.parse(v.register_body_text).capabilities;
  assert.deepEqual(capabilities, []);
  assert.equal(tk.registrationBody(a, TS, capabilities), v.register_body_text, 'register_body_text');
  assert.equal(tk.authorizationHeader(a, TS), v.authorization_header_text, 'authorization_header_text');
  rng.assertUsedUp('signing takes no randomness');
});

test('registration-body carries capabilities in order', async () => {
  const { toolkit: tk } = await freshCore();
  const a = tk.identityImport(fromHex(AB.alice.ed25519_seed));
  const body = JSON.parse(tk.registrationBody(a, TS, ['offload', 'mesh-chat']));
  assert.deepEqual(body.capabilities, ['offload', 'mesh-chat']);
  assert.equal(body.proof, AB.alice_auth.registry_pop_proof_b64url, 'proof does not depend on capabilities');
});

// --------------------------------------------------------------- bob_prekeys
test('alice_bob.bob_prekeys: prekeys-generate(bob, 1) body', async () => {
  const s = await aliceBob('prekeys');
  assert.equal(s.prekeyBody, AB.bob_prekeys.prekey_put_body_text, 'prekey_put_body_text');
});

test('prekeys-generate: key ids start at 0 and increase; keys come from the host RNG', async () => {
  const { toolkit: tk, rng } = await freshCore();
  rng.push('seed (bob)', AB.bob.ed25519_seed);
  const id = tk.identityGenerate();
  const privs = ['01', '02', '03', '04', '05'].map((b) => b.repeat(32));
  rng.push('spk #1', privs[0]);
  rng.push('opk #1', privs[1]);
  rng.push('opk #2', privs[2]);
  const first = JSON.parse(tk.prekeysGenerate(id, 2));
  rng.assertUsedUp('prekeys-generate(id, 2)');
  assert.equal(first.signed_pre_key.key_id, 0);
  assert.deepEqual(first.one_time_pre_keys.map((k) => k.key_id), [0, 1]);
  assert.equal(Buffer.from(first.signed_pre_key.public_key, 'base64url').toString('hex'), x25519Public(privs[0]));
  assert.deepEqual(
    first.one_time_pre_keys.map((k) => Buffer.from(k.public_key, 'base64url').toString('hex')),
    [x25519Public(privs[1]), x25519Public(privs[2])],
  );
  assert.ok(
    ed25519Verify(AB.bob.ed25519_public, Buffer.from(first.signed_pre_key.public_key, 'base64url'), Buffer.from(first.signed_pre_key.signature, 'base64url').toString('hex')),
    'SPK signature verifies with the identity key over the raw SPK',
  );
  rng.push('spk #2', privs[3]);
  rng.push('opk #3', privs[4]);
  const second = JSON.parse(tk.prekeysGenerate(id, 1));
  rng.assertUsedUp('prekeys-generate(id, 1)');
  assert.ok(second.signed_pre_key.key_id > first.signed_pre_key.key_id, `SPK key_id increases (${first.signed_pre_key.key_id} -> ${second.signed_pre_key.key_id})`);
  assert.ok(second.one_time_pre_keys[0].key_id > 1, `OPK key_id increases (got ${second.one_time_pre_keys[0].key_id} after 0, 1)`);
  for (const body of [first, second]) {
    for (const f of [body.identity_key, body.identity_key_ed, body.signed_pre_key.public_key, body.signed_pre_key.signature]) {
      assert.match(f, /^[A-Za-z0-9_-]+$/, 'registry fields are unpadded base64url');
    }
  }
});

// ---------------------------------------------------------------------- x3dh
test('alice_bob.x3dh: session-initiate establishment', async () => {
  const s = await aliceBob('x3dh');
  assert.equal(typeof s.initiated.session, 'number');
  assert.equal(s.initiated.establishmentJson, AB.x3dh.establishment_text, 'establishment_text');
});

test('session-initiate refuses a bundle with a bad SPK signature or a foreign identity key', async () => {
  const bundle = JSON.parse(bobBundleJson());
  const cases = {
    'SPK signature flipped': (b) => {
      const sig = Buffer.from(b.signed_pre_key.signature, 'base64url');
      sig[0] ^= 1;
      b.signed_pre_key.signature = sig.toString('base64url');
    },
    'identity_key_ed of another agent (DID mismatch)': (b) => {
      b.identity_key_ed = AB.alice.ed25519_public_b64url;
    },
    'identity_key not the X25519 form of identity_key_ed': (b) => {
      b.identity_key = AB.alice.x25519_identity_public_b64url;
    },
    'identity_key_ed missing': (b) => {
      delete b.identity_key_ed;
    },
  };
  for (const [name, mutate] of Object.entries(cases)) {
    const { toolkit: tk, rng } = await freshCore();
    rng.lenient = true;
    const a = tk.identityImport(fromHex(AB.alice.ed25519_seed));
    const b = structuredClone(bundle);
    mutate(b);
    assertRejects(() => tk.sessionInitiate(a, AB.bob.did_text, JSON.stringify(b)), name);
  }
});

// ------------------------------------------------------------- msg0 and msg1
test('alice_bob.msg0: session-encrypt header40 and ciphertext', async () => {
  const s = await aliceBob('msg0');
  assert.equal(hex(s.msg0.header), AB.msg0.header40, 'header40');
  assert.equal(hex(s.msg0.ciphertext), AB.msg0.ciphertext, 'ciphertext');
});

test('alice_bob.msg0: session-respond + session-decrypt gives plaintext_text', async () => {
  const s = await aliceBob('respond');
  assert.equal(typeof s.bobSess, 'number');
  assert.equal(text(s.msg0Plain), AB.msg0.plaintext_text);
});

test('alice_bob.msg1: Bob encrypts after his DH step, Alice decrypts', async () => {
  const s = await aliceBob('msg1');
  assert.equal(hex(s.msg1.header), AB.msg1.header40, 'header40');
  assert.equal(hex(s.msg1.ciphertext), AB.msg1.ciphertext, 'ciphertext');
  assert.equal(text(s.msg1Plain), AB.msg1.plaintext_text);
});

test('session-decrypt: forged ciphertext rejected without changing state', async () => {
  const s = await aliceBob('msg0');
  s.bobSess = s.tk.sessionRespond(s.bob, AB.alice.did_text, AB.x3dh.establishment_text);
  s.rng.lenient = true; // a failed decrypt draws nothing; lenient in case that changes
  const forged = fromHex(AB.msg0.ciphertext);
  forged[20] ^= 0x01;
  assertRejects(() => s.tk.sessionDecrypt(s.bobSess, fromHex(AB.msg0.header40), forged), 'flipped ciphertext byte');
  s.rng.takeDrawn();
  s.rng.lenient = false;
  const plain = s.tk.sessionDecrypt(s.bobSess, fromHex(AB.msg0.header40), fromHex(AB.msg0.ciphertext));
  s.rng.assertUsedUp('genuine msg0 after a forgery');
  assert.equal(text(plain), AB.msg0.plaintext_text);
  // and the state after it is the vector's: Bob's reply is still msg1 exactly
  s.rng.push('bob_dhs_private', AB.ratchet.bob_dhs_private);
  s.rng.push('msg1.nonce', AB.msg1.nonce);
  const m1 = s.tk.sessionEncrypt(s.bobSess, utf8(AB.msg1.plaintext_text));
  assert.equal(hex(m1.ciphertext), AB.msg1.ciphertext, 'msg1 after the rejected forgery');
});

test('session-decrypt: replay of msg0 rejected', async () => {
  const s = await aliceBob('respond');
  s.rng.lenient = true;
  assertRejects(() => s.tk.sessionDecrypt(s.bobSess, fromHex(AB.msg0.header40), fromHex(AB.msg0.ciphertext)), 'replayed msg0');
});

// -------------------------------------------------------------------- frames
function parseFrame(json) {
  const f = JSON.parse(json);
  assert.equal(f.v, 1, 'frame.v');
  assert.equal(f.type, 'message', 'frame.type');
  assert.match(f.id, UUID_V4, 'frame.id is a UUID v4');
  assert.equal(typeof f.header?.dh, 'string', 'frame.header.dh');
  assert.match(f.header.dh, STD_B64, 'header.dh is standard base64 with padding');
  assert.equal(Buffer.from(f.header.dh, 'base64').length, 32, 'header.dh is 32 bytes');
  assert.ok(Number.isInteger(f.header.pn) && Number.isInteger(f.header.n), 'header.pn/n are integers');
  assert.match(f.ciphertext, STD_B64, 'ciphertext is standard base64 with padding');
  return f;
}

function mutateFrame(json, fn) {
  const f = JSON.parse(json);
  fn(f);
  return JSON.stringify(f);
}

/** Both sessions past msg1, RNG lenient: frames in both directions. */
async function framesReady() {
  const s = await aliceBob('msg1');
  s.rng.lenient = true;
  s.rng.takeDrawn();
  return s;
}

test('session-encrypt-frame / session-decrypt-frame round trip', async (t) => {
  const s = await framesReady();
  const { tk, rng } = s;

  // Alice -> Bob: first message of Alice's new sending chain: it takes the
  // sending half of the DH step msg1 left owing (her new ratchet key).
  rng.push('frame id (arbitrary)', '11'.repeat(16));
  rng.push("alice's next ratchet private (arbitrary)", s.aliceNextRatchetPriv);
  const p1 = '{"type":"message","content":"frame one"}';
  const j1 = tk.sessionEncryptFrame(s.aliceSess, utf8(p1));
  const draws1 = rng.takeDrawn();
  t.diagnostic(`session-encrypt-frame drew random lengths: [${draws1.map((d) => d.len).join(', ')}]`);
  const f1 = parseFrame(j1);
  assert.equal(f1.from, AB.alice.did_text, 'frame.from');
  assert.equal(f1.to, AB.bob.did_text, 'frame.to');
  assert.equal(f1.ts, TS, 'frame.ts is the host clock in toISOString form');
  assert.equal(Buffer.from(f1.header.dh, 'base64').toString('hex'), x25519Public(s.aliceNextRatchetPriv), "header.dh is Alice's new ratchet key");
  assert.deepEqual([f1.header.pn, f1.header.n], [1, 0], 'pn = 1 (msg0 on the previous chain), n = 0');
  const ct1 = Buffer.from(f1.ciphertext, 'base64');
  assert.equal(ct1.length, 12 + p1.length + 16, 'ciphertext = nonce(12) || ct || tag(16)');
  assert.ok(
    draws1.some((d) => d.len === 12 && hex(d.bytes) === ct1.subarray(0, 12).toString('hex')),
    'the nonce is 12 bytes drawn from the host RNG',
  );
  assert.equal(text(tk.sessionDecryptFrame(s.bobSess, j1)), p1);

  // Bob -> Alice and a second Alice -> Bob on the same chain.
  const p2 = 'bob says hi';
  assert.equal(text(tk.sessionDecryptFrame(s.aliceSess, tk.sessionEncryptFrame(s.bobSess, utf8(p2)))), p2);
  const p3 = 'alice again';
  const f3 = parseFrame(tk.sessionEncryptFrame(s.aliceSess, utf8(p3)));
  assert.equal(text(tk.sessionDecryptFrame(s.bobSess, JSON.stringify(f3))), p3);

  // Empty and large payloads.
  const big = new Uint8Array(crypto.randomBytes(256 * 1024));
  assert.equal(hex(tk.sessionDecryptFrame(s.bobSess, tk.sessionEncryptFrame(s.aliceSess, big))), hex(big));
  assert.equal(tk.sessionDecryptFrame(s.aliceSess, tk.sessionEncryptFrame(s.bobSess, new Uint8Array(0))).length, 0);
});

test('session-decrypt-frame accepts base64url (unpadded) header.dh and ciphertext', async () => {
  const s = await framesReady();
  const p = 'url-safe alphabet';
  const j = mutateFrame(s.tk.sessionEncryptFrame(s.aliceSess, utf8(p)), (f) => {
    f.header.dh = Buffer.from(f.header.dh, 'base64').toString('base64url');
    f.ciphertext = Buffer.from(f.ciphertext, 'base64').toString('base64url');
  });
  assert.equal(text(s.tk.sessionDecryptFrame(s.bobSess, j)), p);
});

test('session-decrypt-frame: forged frame rejected, then the genuine frame still decrypts', async () => {
  const s = await framesReady();
  const { tk } = s;
  // one frame on Alice's new chain first, so the forgeries below need no DH step
  assert.equal(text(tk.sessionDecryptFrame(s.bobSess, tk.sessionEncryptFrame(s.aliceSess, utf8('warm-up')))), 'warm-up');

  const p = '{"type":"message","content":"genuine"}';
  const genuine = tk.sessionEncryptFrame(s.aliceSess, utf8(p));
  const forgeries = {
    'ciphertext byte flipped': (f) => {
      const ct = Buffer.from(f.ciphertext, 'base64');
      ct[ct.length - 20] ^= 0x01;
      f.ciphertext = ct.toString('base64');
    },
    'tag byte flipped': (f) => {
      const ct = Buffer.from(f.ciphertext, 'base64');
      ct[ct.length - 1] ^= 0x80;
      f.ciphertext = ct.toString('base64');
    },
    'nonce byte flipped': (f) => {
      const ct = Buffer.from(f.ciphertext, 'base64');
      ct[0] ^= 0x01;
      f.ciphertext = ct.toString('base64');
    },
    'header.n changed (skipped keys must not stick)': (f) => {
      f.header.n += 3;
    },
    'header.pn changed': (f) => {
      f.header.pn += 1;
    },
    'ciphertext truncated': (f) => {
      f.ciphertext = Buffer.from(f.ciphertext, 'base64').subarray(0, 20).toString('base64');
    },
    'header.dh missing': (f) => {
      delete f.header.dh;
    },
    'not JSON': null,
  };
  for (const [name, fn] of Object.entries(forgeries)) {
    const forged = fn ? mutateFrame(genuine, fn) : genuine.slice(0, -3);
    assertRejects(() => tk.sessionDecryptFrame(s.bobSess, forged), name);
  }
  assert.equal(text(tk.sessionDecryptFrame(s.bobSess, genuine)), p, 'genuine frame after the forgeries');
  // and the session keeps working both ways
  assert.equal(text(tk.sessionDecryptFrame(s.aliceSess, tk.sessionEncryptFrame(s.bobSess, utf8('after')))), 'after');
});

test('session-decrypt-frame: a replayed frame is rejected', async () => {
  const s = await framesReady();
  const j = s.tk.sessionEncryptFrame(s.aliceSess, utf8('once'));
  assert.equal(text(s.tk.sessionDecryptFrame(s.bobSess, j)), 'once');
  assertRejects(() => s.tk.sessionDecryptFrame(s.bobSess, j), 'replay');
  const j2 = s.tk.sessionEncryptFrame(s.aliceSess, utf8('twice'));
  assert.equal(text(s.tk.sessionDecryptFrame(s.bobSess, j2)), 'twice', 'session still usable after the replay');
});

test('session-decrypt-frame: out-of-order frames within a chain decrypt once each', async () => {
  const s = await framesReady();
  const frames = ['a', 'b', 'c'].map((p) => [p, s.tk.sessionEncryptFrame(s.aliceSess, utf8(p))]);
  for (const i of [2, 0, 1]) assert.equal(text(s.tk.sessionDecryptFrame(s.bobSess, frames[i][1])), frames[i][0]);
  for (const [p, j] of frames) assertRejects(() => s.tk.sessionDecryptFrame(s.bobSess, j), `replay of ${p}`);
});

test('session-export / session-import round trip', async () => {
  const s = await framesReady();
  const snap = s.tk.sessionExport(s.bobSess);
  assert.ok(snap instanceof Uint8Array && snap.length > 0);
  const restored = s.tk.sessionImport(snap);
  s.tk.sessionDrop(s.bobSess);
  const j = s.tk.sessionEncryptFrame(s.aliceSess, utf8('to the restored session'));
  assert.equal(text(s.tk.sessionDecryptFrame(restored, j)), 'to the restored session');
  assert.equal(text(s.tk.sessionDecryptFrame(s.aliceSess, s.tk.sessionEncryptFrame(restored, utf8('back')))), 'back');
  assertRejects(() => s.tk.sessionImport(new Uint8Array([0xff, 1, 2, 3])), 'garbage snapshot');
});

// ------------------------------------------------------------ seal / unseal
test('seal / unseal: round trip, wrong key, tampered byte, wrong record type', async () => {
  const { toolkit: tk, rng } = await freshCore();
  rng.lenient = true;
  const key = new Uint8Array(crypto.randomBytes(32));
  const plain = utf8('{"secret":"ratchet state"}');
  const sealed = tk.seal(key, 'session', plain);
  assert.ok(sealed.length >= plain.length + 12 + 16, `sealed length ${sealed.length}`);
  assert.equal(hex(tk.unseal(key, 'session', sealed)), hex(plain), 'round trip');
  assert.notEqual(hex(tk.seal(key, 'session', plain)), hex(sealed), 'two seals differ (fresh nonce)');
  assert.equal(tk.unseal(key, 'session', tk.seal(key, 'session', new Uint8Array(0))).length, 0, 'empty plaintext');

  const wrongKey = Uint8Array.from(key);
  wrongKey[0] ^= 1;
  assertRejects(() => tk.unseal(wrongKey, 'session', sealed), 'wrong key');
  assertRejects(() => tk.unseal(key, 'identity', sealed), 'wrong record type');
  assertRejects(() => tk.unseal(key, 'session', sealed.subarray(0, sealed.length - 1)), 'truncated');
  for (let i = 0; i < sealed.length; i++) {
    const t = Uint8Array.from(sealed);
    t[i] ^= 0x01;
    assertRejects(() => tk.unseal(key, 'session', t), `byte ${i} of ${sealed.length} flipped`);
  }
  assertRejects(() => tk.seal(new Uint8Array(31), 'session', plain), '31-byte key');
  assertRejects(() => tk.unseal(new Uint8Array(16), 'session', sealed), '16-byte key');
});

// -------------------------------------------------------------- pairing token
test('pairing_token: token_text parses to payload_text', async () => {
  const { toolkit: tk } = await freshCore();
  const v = V.pairing_token;
  assert.equal(`azcp_1_${Buffer.from(v.payload_text, 'utf8').toString('base64url')}`, v.token_text, 'vector self-check');
  assert.deepEqual(JSON.parse(tk.pairingTokenParse(v.token_text)), JSON.parse(v.payload_text));
  assert.equal(crypto.createHash('sha256').update(v.secret_text, 'utf8').digest('hex'), v.token_hash, 'vector self-check');
});

for (const [i, c] of V.pairing_token_parsing.accept.entries()) {
  test(`pairing_token_parsing accept #${i}: ${c.case_text}`, async () => {
    const { toolkit: tk } = await freshCore();
    const p = JSON.parse(tk.pairingTokenParse(c.token_text));
    assert.equal(p.controller_amid, c.controller_amid_text, 'controller_amid');
    assert.equal(p.relay_url, c.relay_url_text, 'relay_url');
    assert.equal(p.registry_url, c.registry_url_text, 'registry_url');
    assert.equal(p.secret, c.secret_text, 'secret');
  });
}

for (const [i, c] of V.pairing_token_parsing.reject.entries()) {
  test(`pairing_token_parsing reject #${i}: ${c.case_text}`, async () => {
    const { toolkit: tk } = await freshCore();
    assertRejects(() => tk.pairingTokenParse(c.token_text), c.case_text);
  });
}

test('x3dh_kdf_kat: spec KDF output, not the legacy one', async () => {
  const { toolkit } = await freshCore();
  const k = V.x3dh_kdf_kat;
  const out = hex(toolkit.x3dhKdf(fromHex(k.input)));
  assert.equal(out, k.output_spec);
  assert.notEqual(out, k.output_legacy);
});

test('alice_bob.x3dh: sk from DH1..DH4 through the component KDF', async () => {
  const { toolkit } = await freshCore();
  const x = AB.x3dh;
  assert.equal(hex(toolkit.x3dhKdf(fromHex(x.dh1 + x.dh2 + x.dh3 + x.dh4))), x.sk);
  assert.equal('f'.repeat(64) + x.dh1 + x.dh2 + x.dh3 + x.dh4, x.ikm);
});

test('identity_kek: legacy identity.json key from hostname and home directory', async () => {
  const { toolkit } = await freshCore();
  const k = V.identity_kek;
  assert.equal(hex(toolkit.legacyIdentityKek(k.hostname_text, k.homedir_text)), k.kek);
});

test('plaintext_peer.pair_request: body encoding and decoding', async () => {
  const { toolkit } = await freshCore();
  const p = V.plaintext_peer.pair_request;
  assert.equal(toolkit.plaintextEncode(p.payload_text), p.ciphertext_b64);
  assert.deepEqual(JSON.parse(toolkit.plaintextDecode(p.ciphertext_b64)), JSON.parse(p.payload_text));
  // Non-ASCII is escaped so Latin-1 (atob) and UTF-8 readers agree.
  const enc = toolkit.plaintextEncode('{"t":"ünï ☃ 😀"}');
  assert.ok(/^[\x00-\x7f]*$/.test(Buffer.from(enc, 'base64').toString('latin1')));
  assert.equal(JSON.parse(toolkit.plaintextDecode(enc)).t, 'ünï ☃ 😀');
  assert.throws(() => toolkit.plaintextDecode('***'), /payload/);
});

test('aead-seal/aead-open: the simd128 ChaCha20 of the built component gives the chacha20 crate\'s bytes and Node\'s', async () => {
  const { toolkit: tk } = await freshCore();
  for (const len of [0, 1, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 65536, 65537]) {
    const key = new Uint8Array(crypto.randomBytes(32));
    const nonce = new Uint8Array(crypto.randomBytes(12));
    const aad = new Uint8Array(crypto.randomBytes(len % 148));
    const pt = new Uint8Array(crypto.randomBytes(len));
    const ours = tk.aeadSeal('messages', key, nonce, aad, pt);
    assert.equal(hex(ours), hex(tk.aeadSeal('chacha20-crate', key, nonce, aad, pt)), `len ${len}`);
    const c = crypto.createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    c.setAAD(aad, { plaintextLength: len });
    assert.equal(hex(ours), hex(Buffer.concat([c.update(pt), c.final(), c.getAuthTag()])), `len ${len}, node:crypto`);
    assert.equal(hex(tk.aeadOpen('chacha20-crate', key, nonce, aad, ours)), hex(pt));
    const bad = ours.slice();
    bad[bad.length - 1] ^= 1;
    assertRejects(() => tk.aeadOpen('messages', key, nonce, aad, bad), `len ${len}, bad tag`);
  }
  assertRejects(() => tk.aeadSeal('messages', new Uint8Array(31), new Uint8Array(12), new Uint8Array(0), new Uint8Array(1)), '31-byte key');
  assertRejects(() => tk.aeadOpen('messages', new Uint8Array(32), new Uint8Array(12), new Uint8Array(0), new Uint8Array(15)), 'no tag');
});
