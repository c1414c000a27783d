// A raw AgentMesh client for red-team tests: it connects to the REAL relay as
// its own identity (proof-of-possession on `connect`, which is all the
// core-5.0.0 relay checks) and then writes whatever frames it likes, including
// plaintext frames whose `from` names somebody else (the relay does not bind
// `from`; agentmesh-wire.md §12.2). Crypto comes from the component's toolkit
// export (identities, connect frames, X3DH, Double Ratchet frames, plaintext
// bodies), so no second implementation is involved.
//
//   const tk = await rawToolkit();
//   const p = await rawPeer({ relayUrl, registryUrl });     // connected
//   p.did
//   await p.plaintext(toDid, { type: 'offload_request', ... }, { from: victimDid });
//   const s = await p.openSession(toDid);                    // KNOCK (with ik_ed)
//   await p.encrypted(s, { type: 'message', content: 'hi' });
//   p.frames                                                  // frames the relay pushed to us
//   await p.close();
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { loadCore } from '../../js-host/core.js';

let corePromise;
/** One toolkit instance per process (it holds many identities and sessions). */
export function rawToolkit() {
  corePromise ??= loadCore({ log: () => {} });
  return corePromise.then((c) => c.toolkit);
}

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const wsUrl = (relayUrl) => `${relayUrl.replace(/^http/, 'ws').replace(/\/$/, '')}/ws`;

/** A made-up `did:mesh:` DID (nobody holds its key). */
export function fakeDid() {
  return `did:mesh:${randomUUID().replace(/-/g, '')}`;
}

/**
 * @param {{relayUrl: string, registryUrl?: string, register?: boolean, graceMs?: number}} o
 *   register: also register with the registry and upload prekeys (so others can KNOCK it)
 */
export async function rawPeer({ relayUrl, registryUrl, register = false, graceMs = 150 }) {
  const tk = await rawToolkit();
  const id = tk.identityGenerate();
  const info = tk.identityDescribe(id);
  const did = info.did;
  const ikEd = b64(info.ed25519Public);
  const sessions = new Set();

  if (register) {
    const ts = new Date().toISOString();
    const r = await fetch(`${registryUrl}/v1/agents`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: tk.registrationBody(id, ts, ['redteam']),
    });
    if (r.status !== 201) throw new Error(`raw peer: register ${r.status} ${await r.text()}`);
    const body = tk.prekeysGenerate(id, 5);
    const p = await fetch(`${registryUrl}/v1/agents/${did}/prekeys`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: tk.authorizationHeader(id, new Date().toISOString()) },
      body,
    });
    if (p.status !== 200) throw new Error(`raw peer: prekeys ${p.status} ${await p.text()}`);
  }

  const ws = new WebSocket(wsUrl(relayUrl), { maxPayload: 64 * 1024 * 1024 });
  const frames = [];
  let closed = null;
  ws.on('message', (d) => {
    try {
      frames.push(JSON.parse(d.toString()));
    } catch {
      /* not JSON */
    }
  });
  const closedP = new Promise((resolve) => ws.on('close', (code, reason) => {
    closed = { code, reason: reason.toString() };
    resolve(closed);
  }));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.on('error', () => {});
  ws.send(tk.connectFrame(id, new Date().toISOString()));
  // The relay answers nothing on success; a refusal is an error frame and a close.
  await new Promise((r) => setTimeout(r, graceMs));
  if (closed) throw new Error(`raw peer: relay refused connect: ${closed.code} ${closed.reason} ${JSON.stringify(frames)}`);

  const sendText = (text) => new Promise((resolve, reject) => {
    if (closed) return reject(new Error(`raw peer ${did}: socket closed (${closed.code} ${closed.reason})`));
    ws.send(text, (err) => (err ? reject(err) : resolve()));
  });

  return {
    did,
    frames,
    get closed() {
      return closed;
    },
    /** Send any frame object as is. */
    send: (frame) => sendText(typeof frame === 'string' ? frame : JSON.stringify(frame)),
    /**
     * A plaintext `message` frame carrying `payload` (JSON), `from` forged at will.
     * dialect: 'payload' (the kars controller's), 'ts' (the TS SDK's
     * `ciphertext` + `plaintext:true`) or 'both' (kars-py: both fields).
     */
    plaintext(to, payload, { from = did, dialect = 'payload', id = randomUUID() } = {}) {
      const body = tk.plaintextEncode(JSON.stringify(payload));
      const frame = { type: 'message', to, from, id };
      if (dialect === 'ts' || dialect === 'both') Object.assign(frame, { v: 1, ts: new Date().toISOString(), ciphertext: body, plaintext: true });
      if (dialect === 'payload' || dialect === 'both') frame.payload = body;
      return sendText(JSON.stringify(frame));
    },
    /** KNOCK `to` (its bundle fetched from the registry; our ik_ed included). Returns a session handle. */
    async openSession(to) {
      const r = await fetch(`${registryUrl}/v1/agents/${to}/prekeys`);
      if (r.status !== 200) throw new Error(`raw peer: bundle of ${to}: ${r.status}`);
      const ini = tk.sessionInitiate(id, to, await r.text());
      sessions.add(ini.session);
      const establishment = { ...JSON.parse(ini.establishmentJson), ik_ed: ikEd };
      await sendText(JSON.stringify({
        v: 1, type: 'knock', from: did, to, id: randomUUID(), ts: new Date().toISOString(),
        intent: { action: 'establish_session' }, establishment,
      }));
      return ini.session;
    },
    /** An encrypted `message` frame in session `s` carrying JSON `payload`. */
    encrypted(s, payload) {
      const bytes = Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload), 'utf8');
      return sendText(tk.sessionEncryptFrame(s, bytes));
    },
    async close() {
      if (!closed) {
        try {
          ws.send(JSON.stringify({ v: 1, type: 'disconnect', from: did }));
        } catch {
          /* gone */
        }
        const t = setTimeout(() => ws.terminate(), 1000);
        ws.close();
        await closedP;
        clearTimeout(t);
      }
      for (const s of sessions) tk.sessionDrop(s);
      sessions.clear();
      tk.identityDrop(id);
    },
  };
}
