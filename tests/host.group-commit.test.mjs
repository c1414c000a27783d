// js-host/event-loop.js: group commit. The stores of a batch of events land
// in one transaction; nothing else the batch asked for leaves before that
// commit; a failed commit or a trap lets nothing of the batch out; batches
// that only set timers commit later with the next one. And js-host/state-db.js:
// a process killed inside a transaction leaves none of it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createEventLoop, LAZY_COMMIT_MS } from '../js-host/event-loop.js';
import { openRecordsDb } from '../js-host/state-db.js';

const sealed = (n) => { const b = new Uint8Array(40); b[0] = 2; b[1] = n; return b; };

/** A store that records what happens to it, in order, in `log`. */
function recordingStore(log, { failCommit = false, async = false } = {}) {
  const committed = new Map();
  let pending = null;
  let commits = 0;
  return {
    committed,
    get inBatch() { return pending !== null; },
    begin() { if (!pending) { pending = new Map(); log.push('begin'); } },
    set(k, v) { (pending ?? committed).set(k, v); log.push(`set ${k}`); },
    delete(k) { (pending ?? committed).set(k, undefined); log.push(`erase ${k}`); },
    get(k) { return pending?.has(k) ? pending.get(k) : committed.get(k); },
    commit() {
      if (!pending) return undefined;
      if (async) {
        // An IndexedDB-like store (js-host/console/storage-idb.js): the
        // transaction lands later, or fails later.
        // failCommit 'first': only the first transaction fails; a later
        // one still lands, as IndexedDB runs it after the failed one.
        const batch = pending;
        pending = null;
        log.push('commit started');
        const fails = failCommit === 'first' ? ++commits === 1 : failCommit;
        return new Promise((resolve, reject) => setTimeout(() => {
          if (fails) {
            log.push('commit failed');
            return reject(Object.assign(new Error('quota exceeded'), { code: 'KARS_MESH_QUOTA' }));
          }
          for (const [k, v] of batch) committed.set(k, v);
          log.push('commit landed');
          resolve();
        }, 5));
      }
      if (failCommit) throw new Error('disk full');
      for (const [k, v] of pending) committed.set(k, v);
      pending = null;
      log.push('commit');
      return undefined;
    },
    rollback() { pending = null; log.push('rollback'); },
  };
}

function loopWith(handle, { store, log, onDeath = () => {} }) {
  return createEventLoop({
    engine: { handle },
    takeHostFault: () => null,
    store,
    fileWrite: (rel) => log.push(`file-write ${rel}`),
    carryOut: (cmds) => { for (const c of cmds) log.push(`out ${c.tag}${c.val?.text ? ' ' + c.val.text : ''}`); },
    log: () => {},
    onDeath,
  });
}

test('the events waiting together are one batch: every store first, one commit, then the commands in order', () => {
  const log = [];
  const store = recordingStore(log);
  const seenBeforeCommit = [];
  const loop = loopWith((ev) => {
    const n = ev.val;
    // The engine's reads see the batch's earlier stores before they are committed.
    if (n > 0) seenBeforeCommit.push(store.get(`r${n - 1}`)?.[1]);
    return [
      { tag: 'store', val: [`r${n}`, sealed(n)] },
      { tag: 'socket-send', val: { socket: 1, text: `frame ${n}` } },
      { tag: 'tool-result', val: { callId: `c${n}`, resultJson: '{}' } },
    ];
  }, { store, log });
  loop.dispatchAll([0, 1, 2].map((n) => ({ tag: 'socket-frame', val: n })));
  assert.deepEqual(log, [
    'begin', 'set r0', 'set r1', 'set r2', 'commit',
    'out socket-send frame 0', 'out tool-result', 'out socket-send frame 1', 'out tool-result', 'out socket-send frame 2', 'out tool-result',
  ]);
  assert.deepEqual(seenBeforeCommit, [0, 1]);
});

test('a commit that fails lets nothing of the batch out and stops the node', () => {
  const log = [];
  let died = null;
  const loop = loopWith(() => [
    { tag: 'store', val: ['k', sealed(1)] },
    { tag: 'socket-send', val: { socket: 1, text: 'must not leave' } },
  ], { store: recordingStore(log, { failCommit: true }), log, onDeath: (e) => { died = e; } });
  loop.dispatch({ tag: 'socket-frame', val: 0 });
  assert.equal(died?.code, 'KARS_MESH_STORE');
  assert.match(died.message, /cannot commit state records: disk full/);
  assert.ok(!log.some((l) => l.startsWith('out ')), log.join('\n'));
  assert.ok(log.includes('rollback'));
  loop.dispatch({ tag: 'socket-frame', val: 1 });
  assert.equal(log.filter((l) => l === 'set k').length, 1, 'a dead loop hands the engine nothing more');
});

test('a damaged database met on a write or at commit stops the node as a state directory problem, not a host fault to restart past', () => {
  const damage = () => Object.assign(new Error('the state database /x/state.db is damaged (database disk image is malformed); a restart reads the same damage'), { name: 'StateDirError', code: 'KARS_MESH_STATE_DAMAGED' });
  for (const where of ['set', 'commit']) {
    const log = [];
    let died = null;
    const store = recordingStore(log);
    store[where] = () => { throw damage(); };
    const loop = loopWith(() => [
      { tag: 'store', val: ['k', sealed(1)] },
      { tag: 'socket-send', val: { socket: 1, text: 'must not leave' } },
    ], { store, log, onDeath: (e) => { died = e; } });
    loop.dispatch({ tag: 'socket-frame', val: 0 });
    assert.equal(died?.name, 'StateDirError', where);
    assert.equal(died.code, 'KARS_MESH_STATE_DAMAGED', where);
    assert.match(died.message, /is damaged .*; this node is stopped$/, where);
    assert.ok(!log.some((l) => l.startsWith('out ')), log.join('\n'));
  }
});

test('a trap in the middle of a batch rolls back the batch\'s earlier stores too; none of its commands leave', () => {
  const log = [];
  let died = null;
  const loop = loopWith((ev) => {
    if (ev.val === 1) throw new Error('unreachable');
    return [{ tag: 'store', val: [`r${ev.val}`, sealed(ev.val)] }, { tag: 'socket-send', val: { socket: 1, text: `f${ev.val}` } }];
  }, { store: recordingStore(log), log, onDeath: (e) => { died = e; } });
  loop.dispatchAll([0, 1].map((n) => ({ tag: 'socket-frame', val: n })));
  assert.equal(died?.code, 'KARS_MESH_CORE_TRAP');
  assert.deepEqual(log, ['begin', 'set r0', 'rollback']);
});

test('file-write commits the stores before it first; a batch of only timers commits later, with the next batch or after a quiet moment', async () => {
  const log = [];
  const store = recordingStore(log);
  const loop = loopWith((ev) => {
    if (ev.tag === 'file') return [{ tag: 'store', val: ['before', sealed(1)] }, { tag: 'file-write', val: ['out/a.bin', new Uint8Array(1)] }, { tag: 'store', val: ['after', sealed(2)] }, { tag: 'tool-result', val: { callId: 'x', resultJson: '{}' } }];
    if (ev.tag === 'receipt') return [{ tag: 'erase', val: 'outbox/1' }, { tag: 'timer-cancel', val: 1n }];
    return [{ tag: 'store', val: ['sent', sealed(3)] }, { tag: 'socket-send', val: { socket: 1, text: 'next' } }];
  }, { store, log });
  loop.dispatch({ tag: 'file' });
  assert.deepEqual(log, ['begin', 'set before', 'commit', 'file-write out/a.bin', 'begin', 'set after', 'commit', 'out tool-result']);
  log.length = 0;
  loop.dispatch({ tag: 'receipt' });
  assert.deepEqual(log, ['begin', 'erase outbox/1', 'out timer-cancel'], 'nothing leaves: no commit needed yet');
  loop.dispatch({ tag: 'send' });
  assert.deepEqual(log.slice(3), ['set sent', 'commit', 'out socket-send next'], 'one commit covers both batches');
  log.length = 0;
  loop.dispatch({ tag: 'receipt' });
  await new Promise((r) => setTimeout(r, LAZY_COMMIT_MS * 4));
  assert.deepEqual(log, ['begin', 'erase outbox/1', 'out timer-cancel', 'commit'], 'committed after a quiet moment');
});

test('idle time: an engine that asks for it gets one idle event once nothing waits, after the events already there; the idle batch commits, counts and carries out nothing', async () => {
  const log = [];
  const store = recordingStore(log);
  const counts = [];
  let died = null;
  const loop = createEventLoop({
    engine: {
      handle(ev) {
        log.push(`handle ${ev.tag}`);
        if (ev.tag === 'idle') return [];
        // A message under a new ratchet key: its records, its ack, then the ask.
        return [{ tag: 'store', val: [`r${ev.val}`, sealed(ev.val)] }, { tag: 'socket-send', val: { socket: 1, text: `ack ${ev.val}` } }, { tag: 'idle-wanted' }];
      },
    },
    takeHostFault: () => null,
    store,
    fileWrite: () => {},
    carryOut: (cmds, handled) => { counts.push(handled); for (const c of cmds) log.push(`out ${c.tag}`); },
    log: () => {},
    onDeath: (e) => { died = e; },
  });
  loop.dispatch({ tag: 'socket-frame', val: 1 });
  // Another event in the same turn is handled first.
  loop.dispatch({ tag: 'socket-frame', val: 2 });
  assert.ok(!log.includes('handle idle'), 'not in the turn that asked');
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(log, [
    'handle socket-frame', 'begin', 'set r1', 'commit', 'out socket-send',
    'handle socket-frame', 'begin', 'set r2', 'commit', 'out socket-send',
    'handle idle',
  ], 'one idle event for two asks, after both frames; nothing of it is committed or carried out');
  assert.deepEqual(counts, [1, 1, 0], 'the idle batch is not a handled event');
  assert.ok(!log.includes('out idle-wanted'), 'idle-wanted stays in the loop');
  // Asked again, then stopping: no idle for a loop that no longer runs.
  loop.dispatch({ tag: 'socket-frame', val: 3 });
  loop.beginStop();
  await new Promise((r) => setImmediate(r));
  assert.equal(log.filter((l) => l === 'handle idle').length, 1);
  assert.equal(died, null);
});

test('idle time waits for an asynchronous commit, is offered again once it lands, and never follows the stop event', async () => {
  const log = [];
  const store = recordingStore(log, { async: true });
  const loop = createEventLoop({
    engine: {
      handle(ev) {
        log.push(`handle ${ev.tag}`);
        if (ev.tag === 'socket-frame') return [{ tag: 'store', val: [`r${ev.val}`, sealed(ev.val)] }, { tag: 'socket-send', val: { socket: 1, text: 'ack' } }, { tag: 'idle-wanted' }];
        return [];
      },
    },
    takeHostFault: () => null,
    store,
    fileWrite: () => {},
    carryOut: (cmds) => { for (const c of cmds) log.push(`out ${c.tag}`); },
    log: () => {},
    onDeath: () => {},
  });
  loop.dispatch({ tag: 'socket-frame', val: 1 });
  await new Promise((r) => setImmediate(r));
  assert.ok(!log.includes('handle idle'), 'not while the commit is on its way');
  await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(log.slice(-3), ['commit landed', 'out socket-send', 'handle idle'], 'offered again once the commit landed');
  // A worker's loop hears `stop` as an event, never beginStop().
  log.length = 0;
  loop.dispatchAll([{ tag: 'socket-frame', val: 2 }, { tag: 'stop' }]);
  await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setImmediate(r));
  assert.ok(log.includes('handle stop') && !log.includes('handle idle'), log.join('\n'));
});

test('an asynchronous commit (the browser\'s IndexedDB): the outbox waits for it, events meanwhile form the next batch, in order', async () => {
  const log = [];
  const store = recordingStore(log, { async: true });
  const loop = loopWith((ev) => [
    { tag: 'store', val: [`r${ev.val}`, sealed(ev.val)] },
    { tag: 'socket-send', val: { socket: 1, text: `m${ev.val}` } },
  ], { store, log });
  loop.dispatch({ tag: 'ev', val: 1 });
  assert.deepEqual(log, ['begin', 'set r1', 'commit started'], 'nothing leaves before the commit lands');
  loop.dispatch({ tag: 'ev', val: 2 });
  loop.dispatch({ tag: 'ev', val: 3 });
  assert.equal(log.length, 3, 'events arriving during the commit wait');
  await loop.whenIdle();
  assert.deepEqual(log, [
    'begin', 'set r1', 'commit started', 'commit landed', 'out socket-send m1',
    'begin', 'set r2', 'set r3', 'commit started', 'commit landed', 'out socket-send m2', 'out socket-send m3',
  ]);
  // file-write: the records before it are committed first (a transaction of their own), and the
  // batch's commands wait for every commit so far.
  log.length = 0;
  const files = loopWith((ev) => [
    { tag: 'store', val: ['before', sealed(1)] },
    { tag: 'file-write', val: ['incoming/x/a.bin', new Uint8Array(1)] },
    { tag: 'store', val: ['after', sealed(2)] },
    { tag: 'tool-result', val: { callId: 'x', resultJson: '{}' } },
  ], { store, log });
  files.dispatch({ tag: 'file' });
  await files.whenIdle();
  assert.deepEqual(log, ['begin', 'set before', 'commit started', 'file-write incoming/x/a.bin', 'begin', 'set after', 'commit started', 'commit landed', 'commit landed', 'out tool-result']);
});

test('an asynchronous commit that fails (a full quota) lets nothing of the batch out and stops the node', async () => {
  const log = [];
  let died = null;
  const store = recordingStore(log, { async: true, failCommit: true });
  const loop = loopWith(() => [{ tag: 'store', val: ['r', sealed(1)] }, { tag: 'socket-send', val: { socket: 1, text: 'm' } }], { store, log, onDeath: (e) => (died = e) });
  loop.dispatch({ tag: 'ev' });
  loop.dispatch({ tag: 'ev' });
  await loop.whenIdle();
  assert.deepEqual(log, ['begin', 'set r', 'commit started', 'commit failed', 'rollback']);
  assert.equal(died?.code, 'KARS_MESH_QUOTA');
  assert.match(died.message, /^cannot commit state records: quota exceeded; this node is stopped/);
  assert.ok(loop.fatal);
});

test('an asynchronous lazy commit that fails: no later batch starts, so none commits after it (IndexedDB would run a later transaction)', async () => {
  // A message that no reader waits for: its batch keeps everything in the
  // process (a timer), so its stores commit lazily. While that commit is on
  // its way, a send comes: a session record that saw the message. Had the
  // send's batch started (and committed in a transaction of its own) before
  // the lazy one failed, the session would be durable without the message,
  // and the message, sent again after the restart, dropped as a repeat.
  const log = [];
  let died = null;
  const store = recordingStore(log, { async: true, failCommit: 'first' });
  const loop = loopWith((ev) => (ev.tag === 'arrive'
    ? [{ tag: 'store', val: ['inbox/m1', sealed(1)] }, { tag: 'timer-set', val: [1n, 0] }]
    : [{ tag: 'store', val: ['session/p', sealed(2)] }, { tag: 'socket-send', val: { socket: 1, text: 'm2' } }]), { store, log, onDeath: (e) => (died = e) });
  loop.dispatch({ tag: 'arrive' });
  assert.deepEqual(log, ['begin', 'set inbox/m1', 'out timer-set'], 'a lazy batch: carried out at once, not committed');
  loop.flush(); // the lazy commit starts (as its timer would start it)
  loop.dispatch({ tag: 'send' });
  await loop.whenIdle();
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(log, ['begin', 'set inbox/m1', 'out timer-set', 'commit started', 'commit failed', 'rollback']);
  assert.equal(store.committed.has('session/p'), false, 'nothing after the failed commit is durable');
  assert.equal(died?.code, 'KARS_MESH_QUOTA');
  assert.ok(loop.fatal);
});

test('state-db: a process killed inside a transaction leaves none of it; a committed one survives', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-txn-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const child = `
    import { openRecordsDb } from ${JSON.stringify(new URL('../js-host/state-db.js', import.meta.url).href)};
    const db = openRecordsDb(${JSON.stringify(dir)}, { sealedOnly: true });
    const rec = (n) => { const b = new Uint8Array(40); b[0] = 2; b[1] = n; return b; };
    db.begin(); db.set('committed', rec(1)); db.commit();
    db.begin(); db.set('session', rec(2)); db.set('inbox', rec(3));
    process.kill(process.pid, 'SIGKILL');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', child], { encoding: 'utf8' });
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  const db = openRecordsDb(dir);
  t.after(() => db.close());
  assert.deepEqual(db.list(''), ['committed']);
  assert.equal(db.get('committed')[1], 1);
});
