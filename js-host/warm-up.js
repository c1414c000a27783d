// Warm the core's code right after start, in the engine's thread.
//
// Why: V8 runs each wasm function in its baseline tier (Liftoff) until the
// function has spent its tiering budget, and only then compiles it with
// TurboFan, on a background thread. A fresh node therefore answers its first
// messages with unoptimized code, and on a 2-core machine the background
// compiles compete with those very messages. Measured with two fresh nodes on
// the loopback relay (bench/warm-up.mjs): the first round trip 51 to 90 ms,
// the second 20 to 38, and the slow round trips of the p99 (12 to 25 ms where
// most take 5 to 6) fall between the 40th and the 150th. V8's flags do not fit:
// `--no-wasm-dynamic-tiering` doubles the first contact (every function
// compiled by TurboFan at its first call), a lower `--wasm-tiering-budget`
// moves the compiles onto the first messages, and a plugin must not change its
// host's process-wide V8 flags anyway.
//
// So the engine's thread has a throwaway pair of engines hold a conversation
// before the node's own first message: two more instances of the same
// compiled core (V8 shares a module's code, and what it optimizes, between
// instances), fresh identities, an in-memory relay and registry that speak
// just enough of the AgentMesh protocol (register, prekeys, connect, routed
// frames), and `rounds` round trips through the same tools a user calls
// (`mesh_send`, `mesh_inbox`), each with its X3DH, ratchet steps, sealed
// records, receipts and timers (on a clock of its own, so a timer an hour out
// fires at once). Nothing touches the node's state, sockets, disk or clock;
// the pair's keys come from the host's randomness and die with its instances.
// It runs in slices (one engine call each, then setImmediate), so the node's
// own events are handled between slices, and it steps aside while the node
// has events of its own (`whenQuiet`): where traffic starts at once (a bench
// that sends the moment the node is up), that traffic warms the code as it
// always did, and the warm-up's slices and compiles do not compete with it
// (measured: they added 15 to 20 ms to such a first contact). With the
// first message 1 s after start: first round trip 63 → 43 ms, p99 16.8 →
// 11.6 ms (docs/design/TOOLCHAIN.md).

import { isErrorResult } from './cli-output.js';

/** Round trips, past where the slow ones of bench:mesh ended. */
export const WARM_UP_ROUNDS = 150;
/** Engine calls per round trip, at most (about 8 are needed): a pair that does not converse stops there. */
const MAX_CALLS_PER_ROUND = 20;

const RELAY = 'ws://warm-up.invalid/';
const REGISTRY = 'http://warm-up.invalid';

/** No slice until the node has had no event of its own for this long. */
export const QUIET_MS = 50;

/**
 * A `next` for warmUp that runs a slice only once `lastEventAt()` (the
 * node's latest event, performance.now() time) is QUIET_MS behind.
 */
export function whenQuiet(lastEventAt, { quietMs = QUIET_MS, turn = defaultNext(), now = () => performance.now() } = {}) {
  const next = (fn) => {
    const wait = lastEventAt() + quietMs - now();
    if (wait > 0) setTimeout(() => next(fn), Math.ceil(wait));
    else turn(fn);
  };
  return next;
}

class WarmUpError extends Error {}

/** A macrotask turn: setImmediate in Node; a MessageChannel elsewhere (setTimeout clamps to 4 ms). */
function defaultNext() {
  if (typeof setImmediate === 'function') return setImmediate;
  const ch = new MessageChannel();
  const waiting = [];
  ch.port1.onmessage = () => waiting.shift()?.();
  return (fn) => { waiting.push(fn); ch.port2.postMessage(0); };
}

/**
 * @param {() => Promise<{engine: object}>} makeCore a fresh core instance
 *   (`loadCore` with the node's compiled module, memory storage given back
 *   through `storage`): called twice with `{ storage, now }`
 * @param {{ rounds?: number, next?: (fn: () => void) => void, stopped?: () => boolean,
 *   stateKey: () => string }} o  stateKey: a fresh base64 key for a throwaway engine
 * @returns {Promise<{ rounds: number, calls: number, ms: number, routed: object, confirmation?: string, stopped?: true, error?: string }>}
 *   routed: frames the in-memory relay delivered, by type (knock, message, ...);
 *   confirmation: the first mesh_send's (`receipt`: the pair used the kars delivery envelope);
 *   stopped: `o.stopped()` said so before the last round trip
 */
export async function warmUp(makeCore, o) {
  const rounds = o.rounds ?? WARM_UP_ROUNDS;
  const next = o.next ?? defaultNext();
  const stopped = o.stopped ?? (() => false);
  const t0 = performance.now();
  const w = new World(next, stopped, Math.max(1_000, (rounds + 5) * MAX_CALLS_PER_ROUND));
  let done = 0;
  try {
    const [a, b] = await Promise.all([w.engine(makeCore, 'a'), w.engine(makeCore, 'b')]);
    for (const e of [a, b]) e.push({ tag: 'start', val: JSON.stringify({ relay_url: RELAY, registry_url: REGISTRY, name: `warm-up-${e.label}`, state_key: o.stateKey() }) });
    const ra = await w.tool(a, 'mesh_register', {});
    const rb = await w.tool(b, 'mesh_register', {});
    a.did = ra.details?.mesh?.did; b.did = rb.details?.mesh?.did;
    if (!a.did || !b.did) throw new WarmUpError(`mesh_register gave no DID: ${JSON.stringify(ra).slice(0, 200)}`);
    for (; done < rounds; done++) {
      const sent = await w.tool(a, 'mesh_send', { to: b.did, message: { type: 'warm-up', n: done, text: 'x'.repeat(120) } });
      if (isErrorResult(sent)) throw new WarmUpError(`mesh_send: ${sent.content?.[0]?.text}`);
      w.confirmation ??= sent.details?.mesh?.confirmation;
      const got = await w.inbox(b, (m) => m.payload?.n === done);
      await w.tool(b, 'mesh_send', { to: a.did, message: { type: 'echo', content: got.payload } });
      await w.inbox(a, (m) => m.payload?.content?.n === done);
    }
    return w.report(done, t0);
  } catch (e) {
    if (e === STOPPED) return { ...w.report(done, t0), stopped: true };
    return { ...w.report(done, t0), error: e?.message ?? String(e) };
  } finally {
    w.drop();
  }
}

const STOPPED = Symbol('stopped');

/** Two engines, their storage, timers, a relay and a registry, all in memory. */
class World {
  constructor(next, stopped, maxCalls) {
    this.next = next;
    this.stopped = stopped;
    this.maxCalls = maxCalls;
    this.now = Date.now();
    this.calls = 0;
    this.queue = []; // [engine, event]
    this.engines = [];
    this.links = new Map(); // did -> [engine, socket]
    this.agents = new Map(); // did -> prekey bundle (or null)
    this.nextCall = 0;
    this.routed = {};
    /** The first send's `confirmation`: "receipt" when the pair speaks the kars delivery envelope. */
    this.confirmation = undefined;
  }

  report(rounds, t0) {
    return { rounds, calls: this.calls, ms: performance.now() - t0, routed: { ...this.routed }, confirmation: this.confirmation };
  }

  async engine(makeCore, label) {
    const records = new Map();
    const storage = {
      get: (k) => records.get(k),
      *list(prefix) { for (const k of records.keys()) if (k.startsWith(prefix)) yield k; },
    };
    const core = await makeCore({ storage, now: () => this.now });
    const e = { label, core, records, timers: new Map(), sockets: new Map(), results: new Map(), did: null, capabilities: [] };
    e.push = (ev) => this.queue.push([e, ev]);
    this.engines.push(e);
    return e;
  }

  drop() {
    for (const e of this.engines) { e.records.clear(); e.core = null; }
    this.engines = [];
    this.queue = [];
  }

  /** Call a tool and run the world until its result. */
  async tool(e, tool, args) {
    const callId = `w${++this.nextCall}`;
    e.push({ tag: 'tool-call', val: { callId, tool, argsJson: JSON.stringify(args) } });
    await this.runUntil(() => e.results.has(callId), `${tool} on ${e.label}`);
    const r = JSON.parse(e.results.get(callId));
    e.results.delete(callId);
    return r;
  }

  /** Read (and mark) e's inbox until a message matching `want` is there. */
  async inbox(e, want) {
    for (let tries = 0; tries < 50; tries++) {
      const r = await this.tool(e, 'mesh_inbox', { mark_read: true, limit: 50 });
      const m = (r.details?.mesh?.messages ?? []).find(want);
      if (m) return m;
      // Frames still on their way first; then the next timer (a receipt's
      // delay, a re-send) moves the clock.
      if (this.queue.length) await this.step();
      else if (!(await this.advance())) throw new WarmUpError(`${e.label}: the message did not arrive, and nothing is left to run`);
    }
    throw new WarmUpError(`${e.label}: the message did not arrive`);
  }

  async runUntil(cond, what) {
    while (!cond()) {
      if (this.queue.length) await this.step();
      else if (!(await this.advance())) throw new WarmUpError(`${what}: nothing left to run`);
    }
  }

  /** Fire the earliest timer of any engine, moving the clock to it. */
  async advance() {
    let first = null;
    for (const e of this.engines) for (const [id, at] of e.timers) if (!first || at < first[2]) first = [e, id, at];
    if (!first) return false;
    const [e, id, at] = first;
    e.timers.delete(id);
    this.now = Math.max(this.now, Number(at));
    e.push({ tag: 'timer-fired', val: id });
    await this.step();
    return true;
  }

  /** One engine call, after a turn of the thread's own event loop. */
  async step() {
    await new Promise((r) => this.next(r));
    if (this.stopped()) throw STOPPED;
    if (++this.calls > this.maxCalls) throw new WarmUpError(`no conversation after ${this.maxCalls} engine calls`);
    const [e, ev] = this.queue.shift();
    if (!e.core) return;
    for (const c of e.core.engine.handle(ev)) this.carryOut(e, c);
  }

  carryOut(e, { tag, val }) {
    switch (tag) {
      case 'store': e.records.set(val[0], val[1]); break;
      case 'erase': e.records.delete(val); break;
      case 'timer-set': e.timers.set(val[0], val[1]); break;
      case 'timer-cancel': e.timers.delete(val); break;
      case 'tool-result': e.results.set(val.callId, val.resultJson); break;
      case 'socket-open': e.sockets.set(val[0], null); e.push({ tag: 'socket-opened', val: val[0] }); break;
      case 'socket-close':
        // As a host must: the engine hears socket-closed for it (js-host/ENGINE.md).
        this.closed(e, val.socket);
        e.push({ tag: 'socket-closed', val: { socket: val.socket, code: val.code, reason: val.reason } });
        break;
      case 'socket-send': this.relay(e, val.socket, val.text); break;
      case 'http-request': {
        const [status, body] = this.registry(e, val.method, val.url, val.body);
        e.push({ tag: 'http-response', val: { id: val.id, status, body: new TextEncoder().encode(JSON.stringify(body)) } });
        break;
      }
      case 'file-read': e.push({ tag: 'file-failed', val: { id: val.id, message: 'no files in the warm-up' } }); break;
      case 'job-start': e.push({ tag: 'job-exited', val: { id: val.id, code: -1, outputs: [], refused: [], log: 'no jobs in the warm-up' } }); break;
      // As the event loop does: the idle step is on the message path too.
      case 'idle-wanted': e.push({ tag: 'idle' }); break;
      default: break; // file-write, file-erase, job-kill: nothing to do
    }
  }

  closed(e, socket) {
    const did = e.sockets.get(socket);
    if (did && this.links.get(did)?.[0] === e) this.links.delete(did);
    e.sockets.delete(socket);
  }

  /** core-5.0.0's routing, and nothing else: connect names the socket, routed frames go to their `to`. */
  relay(e, socket, text) {
    let f;
    try { f = JSON.parse(text); } catch { return; }
    if (f.type === 'connect' && typeof f.from === 'string') {
      e.sockets.set(socket, f.from);
      this.links.set(f.from, [e, socket]);
      return;
    }
    if (!['message', 'knock', 'knock_accept', 'knock_reject'].includes(f.type) || !f.to || !f.id) return;
    const to = this.links.get(f.to);
    if (!to) return;
    this.routed[f.type] = (this.routed[f.type] ?? 0) + 1;
    to[0].push({ tag: 'socket-frame', val: { socket: to[1], text } });
  }

  /**
   * The registry's endpoints the message path uses (agentmesh-wire.md §3.1).
   * An agent's registration is answered with the capabilities it registered:
   * both engines register `kars-mesh`, so they speak the kars delivery
   * envelope (sequence numbers, receipts, held messages) as two nodes do,
   * and that is the code the warm-up must reach.
   */
  registry(e, method, url, body) {
    const path = url.slice(REGISTRY.length).split('?')[0];
    const seg = path.split('/').filter(Boolean);
    const json = () => { try { return JSON.parse(new TextDecoder().decode(body)); } catch { return {}; } };
    if (method === 'POST' && path === '/v1/agents') {
      const caps = json().capabilities;
      e.capabilities = Array.isArray(caps) ? caps.filter((c) => typeof c === 'string') : [];
      return [201, { status: 'registered' }];
    }
    if (seg[0] === 'v1' && seg[1] === 'agents' && seg[2]) {
      const did = decodeURIComponent(seg[2]);
      if (seg[3] === 'prekeys' && method === 'PUT') {
        const b = json();
        this.agents.set(did, b);
        return [200, { did, otk_count: b.one_time_pre_keys?.length ?? 0 }];
      }
      if (seg[3] === 'prekeys' && method === 'GET') {
        const b = this.agents.get(did);
        if (!b) return [404, { detail: 'Pre-key bundle not found' }];
        const { one_time_pre_keys: otks = [], ...rest } = b;
        return [200, { ...rest, identity_key_ed: rest.identity_key_ed ?? null, one_time_pre_key: otks.shift() ?? null }];
      }
      if (seg[3] === 'heartbeat') return [200, { did, last_seen: new Date(this.now).toISOString() }];
      if (!seg[3] && method === 'GET') {
        const owner = this.engines.find((x) => x.did === did);
        return this.agents.has(did) ? [200, { did, capabilities: owner?.capabilities ?? [], metadata: {} }] : [404, { detail: 'Agent not found' }];
      }
    }
    if (path === '/v1/discover') return [200, { results: [], total: 0 }];
    return [404, { detail: 'Not Found' }];
  }
}
