// The one road into the engine. Every event (tool calls, WebSocket callbacks,
// fetch completions, timer fires, jobs) goes through dispatch(event). The
// engine handles one event at a time; events that arrive meanwhile wait in a
// queue, so the engine always sees the effects of its commands in the order
// it issued them (js-host/ENGINE.md).
//
// Group commit. The events waiting in the queue are handled as one batch:
// every `store`/`erase` of the batch goes into one database transaction (the
// engine's reads see them at once, uncommitted), and the batch's other
// commands wait in an outbox. Only when the transaction is committed (one
// WAL fsync for the whole batch) is the outbox carried out, in order. So
// nothing that follows a store (a frame, a receipt, a tool result, an HTTP
// request) leaves before that store is durable, which is the crash rule of
// the 0.1.0 host with one fsync per batch instead of four per record.
//   - `file-write` is durable at once: the batch is committed before it, so
//     the order "records, then the file, then later records" holds on disk.
//   - A batch ends after MAX_BATCH_EVENTS events, MAX_BATCH_MS of engine
//     time or MAX_BATCH_BYTES stored, so an answer never waits behind a flood.
//   - A batch whose commands all stay inside this process (timers, reading a
//     file the user named) need not wait for its commit: nothing leaves, so
//     nothing can be seen that a crash would undo. Its commands are carried
//     out at once and its writes join the next batch's commit, or are
//     committed after LAZY_COMMIT_MS of quiet. A receipt from a peer
//     (erasing the acknowledged entry) is such a batch, so it costs no fsync
//     of its own; a crash before the commit makes the peer receive that
//     message again, which it drops as a repeat.
//   - If the core traps or a write fails, the open transaction is rolled
//     back and nothing of the batch leaves: as if the node had crashed
//     before it (the engine's restore handles that, and peers resend).
//
// Idle time. The engine may ask for it (`idle-wanted`: a ratchet step a
// received message left owing, whose key generation and DH it would rather
// not do on the path of the next message). Once no event waits, no batch
// runs and no commit is on its way, the loop hands it one `idle` event, as
// a batch of its own, on a later turn of the event loop (so events already
// on their way come first). An idle batch stores nothing in practice and
// nothing of it leaves; it is not counted as a handled event (`carryOut`'s
// count is of dispatched events). A host that never answers loses nothing.
//
// A store whose commit() returns a promise (the browser's IndexedDB,
// js-host/console/storage-idb.js) commits asynchronously: the batch's outbox
// is carried out once the promise resolves, and no further batch starts
// before that, nor before a lazy commit lands (events that arrive meanwhile
// wait and form the next batch); a rejected commit stops the node as a
// failed one does, and nothing after it commits. Reads during a
// batch come from the store (which sees its own uncommitted writes) either way.

import { NodeError, StateDirError, errorText } from './node-error.js';

/**
 * Why the node stopped, from what failed under it: a state directory
 * problem (a damaged database) stays one, which a restart does not mend;
 * anything else keeps `code` (by default a host fault, which a restart may
 * get past: `restart` says so).
 */
function stopped(what, cause, { code = 'KARS_MESH_HOST_FAULT', restart = true } = {}) {
  const state = cause?.name === 'StateDirError' ? cause : cause?.cause?.name === 'StateDirError' ? cause.cause : null;
  if (state) return new StateDirError(`${what}; this node is stopped`, { code: state.code });
  return new NodeError(`${what}; this node is stopped${restart ? ', restart it' : ''}`, { cause, code });
}

/** A store's write or commit failed. */
const storeStopped = (what, e, code) => stopped(`${what}: ${errorText(e)}`, e, { code, restart: false });

export const MAX_BATCH_EVENTS = 256;
export const MAX_BATCH_MS = 20;
export const MAX_BATCH_BYTES = 32 * 1024 * 1024;
export const LAZY_COMMIT_MS = 25;
/**
 * Commands with no effect outside this process: a batch of only these may
 * commit later. The core holds relay acks back until something else of its
 * own leaves, and tells the two apart the same way (`waits_for_commit` in
 * src/io.rs): the lists must agree, and tests/host_contract.rs reads both
 * and fails when they do not.
 */
const STAYS_HERE = new Set(['timer-set', 'timer-cancel', 'file-read']);
/** The idle event (one object: the loop tells it from dispatched events by identity; the warm-up hands the engine the same one). */
export const IDLE = Object.freeze({ tag: 'idle' });
/** A later turn of the event loop: after I/O already waiting (Node), or a task (a browser worker). */
const laterTurn = typeof setImmediate === 'function' ? setImmediate : (f) => setTimeout(f, 0);

/**
 * @param {object} o
 * @param {{ handle(event: object): object[] }} o.engine
 * @param {() => Error|null} o.takeHostFault  the fault a host import recorded since the last call, cleared
 * @param {{ set(k, v): void, delete(k): void, begin?(): void, commit?(): void|Promise<void>, rollback?(): void }} o.store
 *        where `store`/`erase` go; with begin/commit, in one transaction per batch (commit may
 *        return a promise: the batch's outbox then waits for it)
 * @param {(rel: string, bytes: Uint8Array) => void} o.fileWrite  durable file write (`file-write`)
 * @param {(cmds: object[], events: number) => void} o.carryOut  the batch's other commands, in order,
 *        after the commit (called for every batch, with how many events it handled)
 * @param {(level: string, message: string) => void} o.log
 * @param {(err: Error) => void} o.onDeath  the node died: settle what waits, release everything
 * @param {(point: 'store'|'commit', n: number, tags: Set<string>|string|undefined) => void} [o.crashHook]
 *        tests only: js-host/crash-hook.js
 * @param {(stats: {events: number, stores: number, bytes: number, engineMs: number, maxCallMs: number, maxCallSent: number, commitMs: number, committed: boolean}) => void} [o.onBatch]
 *        after each committed batch (what the benchmarks report)
 */
export function createEventLoop({ engine, takeHostFault, store, fileWrite, carryOut, log, onDeath, crashHook, onBatch }) {
  /** 'running' | 'stopping' (only the stop event still reaches the engine) | 'stopped' */
  let state = 'running';
  /** Why the node died (trap, failed write), if it did. */
  let fatal = null;
  const queue = [];
  let draining = false;
  const batched = typeof store.begin === 'function';

  function dispatch(event) {
    if (state !== 'running' && event.tag !== 'stop') {
      return; // after `stop` the core hears nothing more
    }
    queue.push(event);
    if (draining) return; // the running drain picks it up, in order
    drain();
  }

  /** Several events at once (a worker's waiting messages): one batch where the limits allow. */
  function dispatchAll(events) {
    for (const ev of events) {
      if (state !== 'running' && ev.tag !== 'stop') continue;
      queue.push(ev);
    }
    if (!draining) drain();
  }

  function drain() {
    draining = true;
    let paused = false;
    try {
      while (queue.length && !fatal) {
        if (pendingCommit) {
          // A lazy commit is on its way (an asynchronous store): no batch
          // starts before it lands. IndexedDB runs a later transaction even
          // when an earlier one failed (a full quota), so a batch started now
          // could make a session record that saw a message durable without
          // the message itself, and the message, sent again, would be
          // dropped as a repeat.
          paused = true;
          pendingCommit.then(resume);
          return;
        }
        const waiting = runBatch();
        if (waiting) {
          // An asynchronous commit: the outbox and the next batch wait for it.
          paused = true;
          waiting.then(resume);
          return;
        }
      }
    } finally {
      if (!paused) {
        draining = false;
        if (fatal) queue.length = 0;
        settleIdle();
        offerIdle();
      }
    }
  }

  function resume() {
    draining = false;
    if (fatal) queue.length = 0;
    if (queue.length && !fatal) drain();
    else {
      settleIdle();
      offerIdle();
    }
  }

  /** The engine asked for idle time (`idle-wanted`) and has not had it yet. */
  let idleWanted = false;
  let idleOffered = false;
  /** The engine has had its stop event (a worker's loop never hears beginStop). */
  let stopHandled = false;
  /** Hand the engine its idle event on a later turn, once nothing else is to do. */
  function offerIdle() {
    if (!idleWanted || idleOffered || fatal || stopHandled || state !== 'running') return;
    idleOffered = true;
    laterTurn(() => {
      idleOffered = false;
      if (!idleWanted || fatal || stopHandled || state !== 'running') return;
      // Busy again: offered anew when this work is done.
      if (draining || queue.length || pendingCommit) return;
      idleWanted = false;
      dispatch(IDLE);
    });
  }

  /** Who waits for the loop to have nothing to do (whenIdle). */
  let idleWaiters = [];
  function settleIdle() {
    if (draining || pendingCommit || !idleWaiters.length) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
  }

  function runBatch() {
    const batch = { outbox: [], events: 0, idle: 0, stores: 0, bytes: 0, engineMs: 0, maxCallMs: 0, maxCallSent: 0, tags: new Set() };
    const t0 = performance.now();
    while (queue.length && !fatal) {
      handleOne(queue.shift(), batch);
      batch.events++;
      if (batch.events >= MAX_BATCH_EVENTS || batch.bytes >= MAX_BATCH_BYTES || performance.now() - t0 >= MAX_BATCH_MS) break;
    }
    if (fatal) return;
    const c0 = performance.now();
    const leaves = batch.outbox.some((c) => !STAYS_HERE.has(c?.tag));
    const writes = batch.stores + lazyStores;
    if (leaves || !batched) {
      if (!commit()) return;
      crashHook?.('commit', writes, batch.tags);
      lazyStores = 0;
    } else if (store.inBatch) {
      lazyStores += batch.stores;
      lazyTimer ??= setTimeout(flushLazy, LAZY_COMMIT_MS);
      lazyTimer.unref?.();
    }
    const committed = (leaves || !batched) && writes > 0;
    const finish = () => {
      onBatch?.({ events: batch.events, stores: batch.stores, bytes: batch.bytes, engineMs: batch.engineMs, maxCallMs: batch.maxCallMs, maxCallSent: batch.maxCallSent, commitMs: performance.now() - c0, committed });
      try {
        carryOut(batch.outbox, batch.events - batch.idle);
      } catch (e) {
        die(stopped(`the host could not carry out the core's commands (${errorText(e)})`, e));
      }
    };
    if (pendingCommit && (leaves || !batched)) {
      // Nothing of the batch leaves before every commit so far has landed.
      const waiting = pendingCommit;
      pendingCommit = null;
      return waiting.then((ok) => {
        if (ok && !fatal) finish();
      });
    }
    finish();
    return undefined;
  }

  /** Writes of batches that did not need their commit yet (see the header). */
  let lazyStores = 0;
  let lazyTimer = null;
  function flushLazy() {
    lazyTimer = null;
    if (draining || fatal || !store.inBatch) return;
    if (commit()) {
      crashHook?.('commit', lazyStores, undefined);
      lazyStores = 0;
    }
  }

  /** Commits started but not yet landed (an asynchronous store): resolves true, or false after a failure. */
  let pendingCommit = null;

  function commit() {
    if (lazyTimer) {
      clearTimeout(lazyTimer);
      lazyTimer = null;
    }
    if (!batched) return true;
    const failed = (e) => die(storeStopped('cannot commit state records', e, e?.code ?? 'KARS_MESH_STORE'));
    let landed;
    try {
      landed = store.commit();
    } catch (e) {
      failed(e);
      return false;
    }
    if (landed && typeof landed.then === 'function') {
      const p = landed.then(() => true, (e) => {
        failed(e);
        return false;
      });
      const all = pendingCommit ? Promise.all([pendingCommit, p]).then(([a, b]) => a && b) : p;
      pendingCommit = all;
      // A lazy commit nobody waits for is done with once it lands.
      all.then(() => {
        if (pendingCommit === all) pendingCommit = null;
        settleIdle();
        if (!draining) offerIdle();
      });
    }
    return true;
  }

  function handleOne(event, batch) {
    batch.tags.add(event?.tag);
    if (event === IDLE) batch.idle++;
    else if (event?.tag === 'stop') stopHandled = true;
    takeHostFault(); // one recorded outside handle() is not this call's
    let cmds;
    const h0 = performance.now();
    try {
      cmds = engine.handle(event);
      const ms = performance.now() - h0;
      batch.engineMs += ms;
      if (ms > batch.maxCallMs) batch.maxCallMs = ms;
    } catch (e) {
      die(new NodeError(`the kars-mesh core failed (${errorText(e)}); this node is stopped, restart it`, {
        cause: e,
        code: e?.code === 'KARS_MESH_CORE_MEMORY' ? e.code : 'KARS_MESH_CORE_TRAP',
      }));
      return;
    }
    // A host import failed during the call: the core went on with a made-up
    // answer, so none of its commands may be carried out.
    const fault = takeHostFault();
    if (fault) {
      die(stopped(fault.message, fault));
      return;
    }
    let sent = 0;
    for (const cmd of cmds) if (cmd?.tag === 'socket-send') sent += cmd.val?.text?.length ?? 0;
    if (sent > batch.maxCallSent) batch.maxCallSent = sent;
    for (const cmd of cmds) {
      switch (cmd?.tag) {
        case 'store': {
          const [key, bytes] = cmd.val;
          if (!durably(`cannot persist state record ${JSON.stringify(key)}`, () => {
            if (batched) store.begin();
            store.set(key, bytes);
          })) return;
          batch.stores++;
          batch.bytes += bytes?.byteLength ?? 0;
          crashHook?.('store', batch.stores, event.tag);
          break;
        }
        case 'erase':
          if (!durably(`cannot erase state record ${JSON.stringify(cmd.val)}`, () => {
            if (batched) store.begin();
            store.delete(cmd.val);
          })) return;
          batch.stores++;
          break;
        case 'idle-wanted':
          idleWanted = true;
          break;
        case 'file-write': {
          const [rel, bytes] = cmd.val;
          if (!commit()) return;
          if (!durably(`cannot write received file ${JSON.stringify(rel)}`, () => fileWrite(rel, bytes))) return;
          break;
        }
        default:
          batch.outbox.push(cmd);
      }
    }
  }

  /** Run a durable write; a failure stops the node (the commands after it may rely on it). */
  function durably(what, write) {
    try {
      write();
      return true;
    } catch (e) {
      die(storeStopped(what, e, 'KARS_MESH_STORE'));
      return false;
    }
  }

  /** The core trapped or a durable write failed: nothing more may reach the core, nothing of the batch leaves. */
  function die(err) {
    if (fatal) return;
    fatal = err;
    if (lazyTimer) clearTimeout(lazyTimer);
    if (batched) store.rollback();
    log('error', err.message);
    queue.length = 0;
    pendingCommit = null;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
    onDeath(err);
  }

  return {
    dispatch,
    dispatchAll,
    die,
    /**
     * Commit writes still waiting for a lazy commit (before the database is
     * closed). With an asynchronous store, a promise of every commit landing.
     */
    flush() {
      if (!fatal && !draining && batched && store.inBatch) flushLazy();
      return pendingCommit ?? undefined;
    },
    /** Resolves once no batch runs and no commit is on its way (an asynchronous store). */
    whenIdle() {
      if (!draining && !pendingCommit) return Promise.resolve();
      return new Promise((r) => idleWaiters.push(r));
    },
    get fatal() {
      return fatal;
    },
    get state() {
      return state;
    },
    /** From now on only the stop event reaches the engine. */
    beginStop() {
      state = 'stopping';
    },
    /** Nothing reaches the engine any more. */
    end() {
      state = 'stopped';
    },
  };
}

/**
 * Running totals of the batches (node.storeStats()), and the longest single
 * engine call and the most frame text one call sent (`maxCallMs`,
 * `maxCallSent`): what a tool call that arrives meanwhile may wait behind.
 */
export function batchTotals() {
  const totals = { batches: 0, commits: 0, events: 0, stores: 0, bytes: 0, engineMs: 0, commitMs: 0, maxCallMs: 0, maxCallSent: 0 };
  return {
    totals,
    add(b) {
      totals.batches++;
      if (b.committed) totals.commits++;
      totals.events += b.events;
      totals.stores += b.stores;
      totals.bytes += b.bytes;
      totals.engineMs += b.engineMs;
      totals.commitMs += b.commitMs;
      totals.maxCallMs = Math.max(totals.maxCallMs, b.maxCallMs ?? 0);
      totals.maxCallSent = Math.max(totals.maxCallSent, b.maxCallSent ?? 0);
    },
  };
}

/**
 * Carry out commands one by one through a table (tag -> function), stopping
 * when the node dies on the way.
 */
export function commandTable(commands, { log, isDead }) {
  return (cmds) => {
    for (const cmd of cmds) {
      const run = Object.hasOwn(commands, cmd.tag) ? commands[cmd.tag] : undefined;
      if (run) run(cmd.val);
      else log('warn', `host: ignoring unknown engine command ${JSON.stringify(cmd?.tag)}`);
      if (isDead()) return;
    }
  };
}
