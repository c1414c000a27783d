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
//
// What V8 learns must be what the node needs, or the node pays twice:
//   - A function's tiering budget is counted per instance, so the pair must
//     run each hot function as often as the node would before its own
//     compile: at 150 round trips `mesh_inbox`'s answer (a 38 KiB TurboFan
//     compile, 12 to 21 ms), the frame parser and serde's content visitor
//     were still unoptimized, and the node compiled them itself near its
//     27th, 36th and 100th round trips; at 300 the pair compiles them.
//   - JavaScript's optimized code is shared by closures of one site, and
//     checks the shapes and call targets it was made for: so each engine is
//     loaded by the same code as the node's, writes to a store of the node's
//     kind, and is handed events that crossed a structured clone as the
//     node's do, and the event loop's own idle event. With events of its own
//     shapes, the glue's `handle` was sent back to unoptimized code by the
//     node's first idle event, and recompiled near its 37th round trip.
// Measured, 6 alternating rounds of two driver nodes, p99 of 200 round trips
// after 20: 8.76 to 9.41 ms before (four runs), 7.21 to 7.87 ms with both
// (docs/design/TOOLCHAIN.md).

import { isErrorResult } from './cli-output.js';
import { IDLE } from './event-loop.js';
import { memoryStorage } from './core.js';

/** Round trips: enough for each instance to spend the tiering budget of the node's hot functions (above). */
export const WARM_UP_ROUNDS = 300;
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
 * @param {(o: { storage: object, store: object, now: () => number }) => Promise<object>} makeCore
 *   a fresh core instance, called twice: `loadCore` with the node's compiled
 *   module and `storage` (reads of `store`), or what `loadEngine` gives
 *   (`{ core, takeHostFault }`, on `store`)
 * @param {{ rounds?: number, next?: (fn: () => void) => void, stopped?: () => boolean,
 *   stateKey?: () => string, openStore?: () => object }} o
 *   stateKey: a fresh base64 key for a throwaway engine (when makeCore gives none);
 *   openStore: a store for one throwaway engine, with the records API of
 *   js-host/state-db.js (the node passes openMemoryRecordsDb, so its own
 *   store code is warmed too); closed when the warm-up ends. Default: a Map.
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
  const w = new World(next, stopped, Math.max(1_000, (rounds + 5) * MAX_CALLS_PER_ROUND), o.openStore ?? mapStore);
  let done = 0;
  try {
    // The pair's instances and stores are made in a slice of their own too,
    // not beside the node's first events (its registration).
    await new Promise((r) => next(r));
    if (stopped()) throw STOPPED;
    const [a, b] = await Promise.all([w.engine(makeCore, 'a'), w.engine(makeCore, 'b')]);
    for (const e of [a, b]) e.push({ tag: 'start', val: JSON.stringify({ relay_url: RELAY, registry_url: REGISTRY, name: `warm-up-${e.label}`, state_key: e.stateKey ?? o.stateKey() }) });
    const ra = await w.tool(a, 'mesh_register', {});
    const rb = await w.tool(b, 'mesh_register', {});
    a.did = ra.details?.mesh?.did; b.did = rb.details?.mesh?.did;
    if (!a.did || !b.did) throw new WarmUpError(`mesh_register gave no DID: ${JSON.stringify(ra).slice(0, 200)}`);
    for (; done < rounds; done++) {
      // Each side reads as an agent waiting for a reply does: a waiting
      // mesh_inbox, answered when the message comes in.
      const bReads = w.call(b, 'mesh_inbox', WAITING_READ);
      const sent = await w.tool(a, 'mesh_send', { to: b.did, message: { type: 'warm-up', n: done, text: 'x'.repeat(120) } });
      if (isErrorResult(sent)) throw new WarmUpError(`mesh_send: ${sent.content?.[0]?.text}`);
      w.confirmation ??= sent.details?.mesh?.confirmation;
      const got = await w.inbox(b, bReads, (m) => m.payload?.n === done);
      const aReads = w.call(a, 'mesh_inbox', WAITING_READ);
      await w.tool(b, 'mesh_send', { to: a.did, message: { type: 'echo', content: got.payload } });
      await w.inbox(a, aReads, (m) => m.payload?.content?.n === done);
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
/** A reader's call: wait for messages (on the warm-up's clock), take them and mark them read. */
const WAITING_READ = { wait_seconds: 10, limit: 500, mark_read: true };

/** Records in a Map (core.js's memoryStorage: reads and writes, no transactions), emptied when closed. */
function mapStore() {
  const storage = memoryStorage();
  return { ...storage, close: () => storage.map.clear() };
}

/**
 * Two engines, their stores, timers, a relay and a registry, all in memory.
 * Each engine writes to a store of the node's kind, each call's writes in a
 * transaction, and every event it is handed has crossed a structured clone,
 * as the node's own events cross from the main thread; its idle event is the
 * event loop's own object: so what V8 learns here (object shapes, call
 * targets) is what the node's first messages need. Measured: with events of
 * other shapes, the glue's `handle` was thrown back to unoptimized code by
 * the node's first idle event and compiled again near its 37th round trip.
 * The engines do not run behind an event loop of their own: that warmed the
 * loop's code too, for the same p99, but one-at-a-time sends were about 5 %
 * slower afterwards (docs/design/TOOLCHAIN.md).
 */
class World {
  constructor(next, stopped, maxCalls, openStore) {
    this.next = next;
    this.stopped = stopped;
    this.maxCalls = maxCalls;
    this.openStore = openStore;
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
    const store = this.openStore();
    const e = { label, core: null, store, takeHostFault: () => null, timers: new Map(), sockets: new Map(), results: new Map(), did: null, capabilities: [] };
    this.engines.push(e); // closed by drop() even if the core fails to load
    const storage = { get: (k) => store.get(k), list: (p) => store.list(p) };
    const made = await makeCore({ storage, store, now: () => this.now });
    e.core = made.engine ? made : made.core;
    e.stateKey = made.takeStateKey?.(); // loadEngine made one; else o.stateKey()
    if (made.takeHostFault) e.takeHostFault = made.takeHostFault;
    e.push = (ev) => this.queue.push([e, ev]);
    return e;
  }

  drop() {
    for (const e of this.engines) {
      try {
        e.store.close?.(); // a transaction still open is rolled back by close
      } catch { /* a throwaway store: nothing of it is kept */ }
      e.core = null;
    }
    this.engines = [];
    this.queue = [];
  }

  /** Call a tool and run the world until its result. */
  async tool(e, tool, args) {
    return this.result(e, this.call(e, tool, args), tool);
  }

  /** Start a tool call; its result comes with result(). */
  call(e, tool, args) {
    const callId = `w${++this.nextCall}`;
    e.push({ tag: 'tool-call', val: { callId, tool, argsJson: JSON.stringify(args) } });
    return callId;
  }

  /** Run the world until the call's result. */
  async result(e, callId, what = 'tool call') {
    await this.runUntil(() => e.results.has(callId), `${what} on ${e.label}`);
    const r = JSON.parse(e.results.get(callId));
    e.results.delete(callId);
    return r;
  }

  /**
   * Wait on e's waiting read (`callId`) until a message matching `want` is
   * there, reading again while it is not (frames still on their way, or a
   * timer to move the clock: a receipt's delay, a re-send).
   */
  async inbox(e, callId, want) {
    for (let tries = 0; tries < 50; tries++) {
      const r = await this.result(e, callId, 'mesh_inbox');
      if (isErrorResult(r)) throw new WarmUpError(`mesh_inbox: ${r.content?.[0]?.text}`);
      const m = (r.details?.mesh?.messages ?? []).find(want);
      if (m) return m;
      callId = this.call(e, 'mesh_inbox', WAITING_READ);
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
    // The loop's idle event is one object, known by identity: not cloned.
    const cmds = e.core.engine.handle(ev === IDLE ? ev : structuredClone(ev));
    const fault = e.takeHostFault();
    if (fault) throw new WarmUpError(`${e.label}: ${fault.message}`);
    // The call's writes in one transaction, as the node's batch does.
    try {
      for (const c of cmds) {
        if (c.tag === 'store') { e.store.begin?.(); e.store.set(c.val[0], c.val[1]); }
        else if (c.tag === 'erase') { e.store.begin?.(); e.store.delete(c.val); }
      }
      e.store.commit?.();
    } catch (err) {
      throw new WarmUpError(`${e.label}: cannot store a record (${err?.message ?? err})`);
    }
    for (const c of cmds) this.carryOut(e, c);
  }

  carryOut(e, { tag, val }) {
    switch (tag) {
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
      case 'idle-wanted': e.push(IDLE); break;
      default: break; // store and erase are done; file-write, file-erase, job-kill: nothing to do
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
