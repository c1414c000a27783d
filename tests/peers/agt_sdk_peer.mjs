// A peer that IS the reference AGT TypeScript client: the unmodified
// MeshClient of npm @microsoft/agent-governance-sdk@4.0.0, run on Node 24
// (its global WebSocket, as the original @kars/mesh plugin ran it), with one
// session per peer kept in memory, every KNOCK accepted, no duplicate check,
// and a session closed on the first frame it cannot decrypt
// ("session_desync"). It speaks the same JSON lines as agt_peer.py, so
// tests/peers/agt_peer.mjs drives both (spawnAgtPeer({ sdk: true })).
//
//   node24 agt_sdk_peer.mjs --relay URL --registry URL [--seed HEX] [--echo]
//
// What is ours, because the 4.0.0 SDK cannot do it against the 5.0.0 servers
// (and the original plugin had to do the same):
//   * registration: RegistryClient.register posts no proof-of-possession,
//     which the 5.0.0 registry requires (422), so the POST /v1/agents with
//     the proof is made here; the prekeys go up through the SDK's own
//     RegistryClient.uploadPrekeys (Ed25519-Timestamp authSigner), exactly
//     as MeshClient.registerSelf does after its register call;
//   * the relay's proof-of-possession: MeshClient's connect frame carries
//     only {v,type,from}; the socket handed to it through its `wsFactory`
//     hook adds public_key/timestamp/signature to that one frame. Every other
//     frame, and all of MeshClient's logic, is the SDK's.
//   * a relay heartbeat every 20 s (the original plugin's ticker; MeshClient
//     has sendHeartbeat() but no timer of its own).
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign as edSign } from 'node:crypto';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { MeshClient, X3DHKeyManager } = require('@microsoft/agent-governance-sdk');
// The package root does not re-export RegistryClient (MeshClient builds one
// from `registryUrl`); the file is the SDK's own, loaded by path.
const SDK_DIR = path.dirname(require.resolve('@microsoft/agent-governance-sdk/package.json'));
const { RegistryClient } = require(path.join(SDK_DIR, 'dist/encryption/registry-client.js'));

const argv = process.argv.slice(2);
const opt = (name) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const relayUrl = opt('--relay');
const registryUrl = opt('--registry').replace(/\/$/, '');
const echo = argv.includes('--echo');
const seed = Buffer.from(opt('--seed') ?? randomBytes(32).toString('hex'), 'hex');

const emit = (ev) => process.stdout.write(`${JSON.stringify(ev)}\n`);

// Ed25519 from a 32-byte seed (PKCS#8 prefix for a raw Ed25519 private key).
const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
const priv = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
const pubRaw = createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(-32);
const did = `did:mesh:${createHash('sha256').update(pubRaw).digest('hex').slice(0, 32)}`;
const signBytes = (bytes) => new Uint8Array(edSign(null, Buffer.from(bytes), priv));
const b64u = (b) => Buffer.from(b).toString('base64url');

async function registerWithProof() {
  const ts = new Date().toISOString();
  const pk = b64u(pubRaw);
  const body = {
    public_key: pk,
    proof: b64u(signBytes(Buffer.from(pk + ts, 'ascii'))),
    proof_timestamp: ts,
    capabilities: ['agt-sdk-peer'],
    metadata: { impl: 'agent-governance-sdk-4.0.0' },
  };
  const r = await fetch(`${registryUrl}/v1/agents`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  if (r.status !== 201 && r.status !== 409) throw new Error(`register: ${r.status} ${await r.text()}`);
}

/** MeshClient's socket, with proof-of-possession added to its connect frame. */
function wsFactory(url) {
  const ws = new WebSocket(url);
  const send = ws.send.bind(ws);
  ws.send = (data) => {
    const f = JSON.parse(String(data));
    if (f.type === 'connect') {
      const ts = new Date().toISOString();
      f.public_key = Buffer.from(pubRaw).toString('base64');
      f.timestamp = ts;
      f.signature = Buffer.from(signBytes(Buffer.from(ts, 'utf8'))).toString('base64');
      return send(JSON.stringify(f));
    }
    return send(data);
  };
  return ws;
}

const keyManager = new X3DHKeyManager(new Uint8Array(seed), new Uint8Array(pubRaw));
const registry = new RegistryClient({ baseUrl: registryUrl, authSigner: { did, sign: signBytes } });
const client = new MeshClient({
  relayUrl, agentDid: did, keyManager, registryClient: registry, autoRegister: false, wsFactory,
});

client.onMessage((from, payload, isPlaintext) => {
  emit({ event: 'message', from, payload, evidence: isPlaintext ? 'plaintext' : 'encrypted' });
  if (echo) void sendTo(from, { type: 'echo', content: payload });
});
client.onError((kind, from, detail) => emit({ event: 'error', source: kind, from, detail: String(detail) }));
client.onDisconnect((reason, code) => emit({ event: 'disconnected', reason, code }));
client.onKnock(async (from) => {
  emit({ event: 'knock', from });
  return true;
});

async function sendTo(to, payload) {
  try {
    const existing = client.getSession(to);
    await client.establishSessionWithPeer(to);
    await client.send(to, payload);
    emit({ event: 'sent', to, session: existing ? 'existing' : 'new' });
  } catch (e) {
    emit({ event: 'error', source: 'send', to, detail: String(e?.message ?? e) });
  }
}

try {
  await registerWithProof();
  await registry.uploadPrekeys(did, keyManager.identityKey.publicKey, keyManager.identityKeyEd,
    keyManager.generateSignedPreKey(), keyManager.generateOneTimePreKeys(20));
} catch (e) {
  emit({ event: 'error', source: 'registry', detail: String(e?.message ?? e) });
  process.exit(2);
}
emit({ event: 'ready', did });
await client.connect();
emit({ event: 'connected' });
const hb = setInterval(() => client.sendHeartbeat(), 20_000);

// One command at a time, in order, as a tool handler would run them.
let chain = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  chain = chain.then(async () => {
    if (!line.trim()) return;
    const c = JSON.parse(line);
    if (c.cmd === 'send') await sendTo(c.to, c.payload);
    else if (c.cmd === 'quit') await quit();
    else emit({ event: 'error', source: 'cmd', detail: `unknown cmd ${c.cmd}` });
  }).catch((e) => emit({ event: 'error', source: 'cmd', detail: String(e?.message ?? e) }));
});
rl.on('close', () => { chain = chain.then(quit); });

let quitting = false;
async function quit() {
  if (quitting) return;
  quitting = true;
  clearInterval(hb);
  await client.disconnect();
  emit({ event: 'bye' });
  process.exit(0);
}
