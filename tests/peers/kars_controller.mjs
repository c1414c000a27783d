// A kars controller as docs/spec/kars-mesh-plugin.md describes the real one
// (Azure/kars `controller/src/mesh_peer/`, `controller/src/pairing.rs`) and
// a kars CLI token maker (`kars pair generate`, §4.1). Written from the spec,
// word for word, independent of the engine's own controller role:
//
//   * registers with capabilities `offload`, `pairing` and its base58 AMID in
//     `metadata`; uploads NO prekeys (a bundle fetch answers 404, §6.5);
//   * speaks only the plaintext `payload` dialect: it sends
//     {"type":"message","to","from","id":"ctrl-<32 hex>","payload":<std b64 of UTF-8 JSON>}
//     and parses only frames that carry `payload`; a frame without it is
//     dropped WITHOUT an ack (§6.5); every handled frame is acked;
//   * pairing (§4.3): tokenHash = hex sha256(secret); PendingPairing and not
//     expired → Active, bound to the frame's `from`; the original error texts;
//   * offload (§7.3): checks boundAmid == from, Active, not expired, a free
//     slot, the `offload` capability; offload_status validating, spawning,
//     scheduled, then `ready` with `sandbox_name` = offload-<request_id[0..8]>
//     once the sandbox is registered; offload_error with phase validating or
//     spawning; offload_cleanup stops the sandbox only for its requester.
//
//   const c = await startKarsController({ relayUrl, registryUrl, spawnSandbox });
//   const token = c.token({ name: 'alice' });          // azcp_1_… with controller_amid
//   c.pairings, c.handled, c.unparsed, c.cleanups
//   await c.close();
//
// spawnSandbox({ name, requestId, parentDid, task, timeoutMinutes }) starts
// the sandbox (a peer registered under `name`) and returns { stop() }.
import { createHash, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { rawToolkit } from './raw_peer.mjs';

const wsUrl = (relayUrl) => `${relayUrl.replace(/^http/, 'ws').replace(/\/$/, '')}/ws`;
const sha256hex = (s) => createHash('sha256').update(Buffer.from(s, 'utf8')).digest('hex');

/** A kars CLI token: azcp_1_ + base64url (no padding) of the JSON, §4.1. */
export function karsCliToken({ controllerAmid, relayUrl, registryUrl, secret }) {
  const json = JSON.stringify({ controller_amid: controllerAmid, relay_url: relayUrl, registry_url: registryUrl, secret });
  return `azcp_1_${Buffer.from(json, 'utf8').toString('base64url')}`;
}

export async function startKarsController({ relayUrl, registryUrl, clusterName = 'kars-cluster', spawnSandbox }) {
  const tk = await rawToolkit();
  const id = tk.identityGenerate();
  const { did, amid } = tk.identityDescribe(id);

  const reg = JSON.parse(tk.registrationBody(id, new Date().toISOString(), ['offload', 'pairing']));
  reg.metadata = { amid };
  const r = await fetch(`${registryUrl}/v1/agents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(reg) });
  if (r.status !== 201) throw new Error(`kars controller: register ${r.status} ${await r.text()}`);

  const pairings = []; // KarsPairing resources: { name, spec, status }
  const sandboxes = new Map(); // request id -> { name, requester, handle }
  const handled = []; // payloads handled, with their sender
  const unparsed = []; // frames dropped without an ack (no `payload`)
  const cleanups = [];
  const ws = new WebSocket(wsUrl(relayUrl));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  ws.on('error', () => {});
  ws.send(tk.connectFrame(id, new Date().toISOString()));
  const hb = setInterval(() => ws.send(JSON.stringify({ type: 'heartbeat' })), 30_000);
  hb.unref();

  const send = (to, payload) => {
    const frame = {
      type: 'message', to, from: did, id: `ctrl-${randomBytes(16).toString('hex')}`,
      payload: Buffer.from(JSON.stringify(payload), 'utf8').toString('base64'),
    };
    ws.send(JSON.stringify(frame));
  };

  function pairRequest(from, p) {
    const hash = sha256hex(String(p.secret ?? ''));
    const k = pairings.find((x) => x.spec.tokenHash === hash);
    const fail = (error) => send(from, { type: 'pair_response', success: false, error });
    if (!k) return fail('Invalid pairing token');
    if (k.status.phase !== 'PendingPairing') return fail(`Pairing is ${k.status.phase} — token already consumed or expired`);
    if (Date.parse(k.spec.expiresAt) < Date.now()) return fail('Pairing token has expired');
    Object.assign(k.status, { phase: 'Active', boundAmid: from, boundPubkeyEd25519: p.pubkey_ed25519, pairedAt: new Date().toISOString() });
    send(from, {
      type: 'pair_response', success: true, cluster_name: clusterName, controller_amid: amid,
      capabilities_granted: k.spec.capabilities, slots: k.spec.slotsMax, token_budget: k.spec.tokenBudget,
      expires_at: k.spec.expiresAt,
    });
  }

  async function offloadRequest(from, p) {
    const rid = p.request_id;
    const status = (phase, message, extra = {}) => send(from, { type: 'offload_status', request_id: rid, phase, message, ...extra });
    const error = (phase, e) => send(from, { type: 'offload_error', request_id: rid, error: e, phase });
    status('validating', 'Validating offload request');
    const k = pairings.find((x) => x.status.boundAmid === from);
    if (!k || k.status.phase !== 'Active') return error('validating', 'No active pairing for this agent');
    if (Date.parse(k.spec.expiresAt) < Date.now()) return error('validating', 'Pairing has expired');
    if (!k.spec.capabilities.includes('offload')) return error('validating', 'Pairing does not grant the offload capability');
    if ((k.status.slotsUsed ?? 0) >= k.spec.slotsMax) return error('validating', 'No free offload slots');
    const name = `offload-${rid.slice(0, 8)}`;
    status('spawning', `Creating sandbox ${name}`);
    k.status.slotsUsed = (k.status.slotsUsed ?? 0) + 1;
    let handle;
    try {
      handle = await spawnSandbox({ name, requestId: rid, parentDid: from, task: p.task, timeoutMinutes: p.preferences?.timeout_minutes ?? 30 });
    } catch (e) {
      k.status.slotsUsed -= 1;
      return error('spawning', `Failed to create sandbox: ${e.message}`);
    }
    sandboxes.set(rid, { name, requester: from, handle, pairing: k });
    status('scheduled', `Sandbox ${name} scheduled`);
    // The real one polls the pod every 3 s until Running and ready.
    for (let i = 0; i < 100; i++) {
      const d = await fetch(`${registryUrl}/v1/discover?capability=${encodeURIComponent(name)}`).then((x) => x.json()).catch(() => ({ results: [] }));
      if (d.results?.length) return status('ready', 'Sandbox is ready', { sandbox_name: name });
      await new Promise((res) => setTimeout(res, 300));
    }
    return error('spawning', 'Sandbox did not become ready');
  }

  function offloadCleanup(from, p) {
    cleanups.push({ from, ...p });
    const s = sandboxes.get(p.request_id);
    if (!s || s.requester !== from) return;
    sandboxes.delete(p.request_id);
    s.pairing.status.slotsUsed -= 1;
    s.handle.stop();
  }

  ws.on('message', (data) => {
    let f;
    try { f = JSON.parse(data.toString()); } catch { return; }
    if (f.type !== 'message') return;
    if (typeof f.payload !== 'string') { unparsed.push(f); return; } // serde fails: no ack
    let p;
    try { p = JSON.parse(Buffer.from(f.payload, 'base64').toString('utf8')); } catch { unparsed.push(f); return; }
    handled.push({ from: f.from, payload: p });
    ws.send(JSON.stringify({ type: 'ack', id: f.id }));
    if (p.type === 'pair_request') pairRequest(f.from, p);
    else if (p.type === 'offload_request') offloadRequest(f.from, p);
    else if (p.type === 'offload_cleanup') offloadCleanup(f.from, p);
  });

  return {
    did,
    amid,
    pairings,
    handled,
    unparsed,
    cleanups,
    /** Send any payload in the controller's dialect (for forged-sender tests). */
    send,
    /** `kars pair generate --name N`: a KarsPairing in PendingPairing and the token. */
    token({ name, slots = 1, capabilities = ['offload', 'handoff'], expiresMs = 90 * 86_400_000, tokenBudget = 500000, placeholder = false }) {
      const secret = randomBytes(32).toString('base64url');
      pairings.push({
        name,
        spec: { tokenHash: sha256hex(secret), expiresAt: new Date(Date.now() + expiresMs).toISOString(), slotsMax: slots, tokenBudget, capabilities, displayName: name },
        status: { phase: 'PendingPairing' },
      });
      const controllerAmid = placeholder ? `ctrl_${randomBytes(10).toString('hex')}` : amid;
      return karsCliToken({ controllerAmid, relayUrl: relayUrl.replace(/^http/, 'ws'), registryUrl, secret });
    },
    async close() {
      clearInterval(hb);
      for (const s of sandboxes.values()) s.handle.stop();
      ws.close();
      tk.identityDrop(id);
    },
  };
}
