// Group commit and crashes (js-host/event-loop.js): a node killed between the
// stores of one batch, or right after a batch's commit before any of its
// commands left, loses nothing and repeats nothing. Each case kills one of
// two real nodes (driver processes, SIGKILL from inside at the chosen point:
// js-host/crash-hook.js), restarts it on the same state directory, and checks
// that every message arrived exactly once and in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { spawnMeshNode } from './drivers/mesh-node-client.mjs';

const COUNT = 12;
let srv;
const dirs = [];
before(async () => {
  srv = await startServers();
});
after(async () => {
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const CASES = [
  // The receiver dies after storing the advanced session, before the inbox
  // entry of the same frame: the relay was not acknowledged, delivers again.
  { victim: 'receiver', at: 'store:2:socket-frame@3', what: 'between the stores of a received message' },
  // The receiver dies with the message committed, before its relay ack and
  // receipt left: the frame comes again and is dropped as a repeat.
  { victim: 'receiver', at: 'commit:2:socket-frame@3', what: 'after the commit of a received message, before its ack' },
  // The sender dies between the stores of a send (session, outbox entry):
  // nothing of it is durable, the call is in doubt and retried with its key.
  { victim: 'sender', at: 'store:2:tool-call@3', what: 'between the stores of a send' },
  // The sender dies with the send committed, before the frame left: the
  // restarted node sends it from its outbox; the retry with the key does not.
  { victim: 'sender', at: 'commit:2:tool-call@3', what: 'after the commit of a send, before the frame left' },
];

for (const c of CASES) {
  test(`a ${c.victim} killed ${c.what} loses nothing and repeats nothing`, { timeout: 120_000 }, async (t) => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-crashpt-'));
    dirs.push(base);
    // Every message event the receiver's drivers print, across restarts
    // (listened to from the start: a restarted driver prints what survived
    // the crash right after 'ready').
    const seen = [];
    const spawn = (name, env) => spawnMeshNode({
      stateDir: path.join(base, name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, label: name, env,
      on: name === 'receiver' ? { message: (m) => seen.push(m) } : undefined,
    });
    const live = new Set();
    t.after(() => Promise.all([...live].map((n) => n.stop())));
    const up = async (name, env) => {
      const n = await spawn(name, env);
      live.add(n);
      n.exited.then(() => live.delete(n));
      return n;
    };
    let sender = await up('sender');
    let receiver = await up('receiver');
    // A session first, so the crash hits a steady-state batch.
    assert.equal((await sender.request({ cmd: 'send', to: receiver.did, message: { type: 'warm' } })).ok, true);
    const untilSeen = async (pred, what) => {
      const end = Date.now() + 60_000;
      while (!pred()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; seen ${JSON.stringify(seen.map((m) => m.payload))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await untilSeen(() => seen.some((m) => m.payload?.type === 'warm'), 'the warm-up message');

    // Restart the victim with the crash point armed.
    const env = { KARS_MESH_TEST_CRASH_AT: c.at };
    if (c.victim === 'receiver') {
      await receiver.stop();
      receiver = await up('receiver', env);
    } else {
      await sender.stop();
      sender = await up('sender', env);
    }
    const victim = c.victim === 'receiver' ? receiver : sender;
    const seqOf = (m) => (m.payload?.type === 'seq' ? m.payload.i : undefined);
    let killed = false;
    const died = victim.exited.then((x) => { killed = x.signal === 'SIGKILL'; });

    for (let i = 0; i < COUNT; i++) {
      const cmd = { cmd: 'send', to: receiver.did, message: { type: 'seq', i }, key: `seq-${i}` };
      let r = await sender.request(cmd).catch((e) => e);
      if (r instanceof Error) {
        // The sender died in this call: the answer is in doubt. Restart, retry with the same key.
        await died;
        assert.equal(killed, true, `the sender died of the armed SIGKILL: ${r.message}`);
        sender = await up('sender');
        r = await sender.request(cmd);
      }
      assert.equal(r.ok, true, JSON.stringify(r));
      // The receiver's points count batches that hold a received frame (the
      // K-th such commit). While the victim lives, each message is let
      // arrive before the next goes, so each is its own batch: on a loaded
      // machine the node batched several frames into one commit, the point
      // was never reached, and the wait for the kill below never ended.
      if (c.victim === 'receiver' && receiver === victim && victim.alive) {
        const end = Date.now() + 15_000;
        while (victim.alive && !seen.some((m) => seqOf(m) === i) && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
      }
      if (c.victim === 'receiver' && !victim.alive && receiver === victim) {
        await died;
        receiver = await up('receiver');
      }
    }
    // Bounded: a point never reached is a failure that says so, not a hang.
    let timer;
    await Promise.race([died.catch(() => {}), new Promise((res) => { timer = setTimeout(res, 20_000); })]);
    clearTimeout(timer);
    assert.equal(killed, true, `the ${c.victim} was killed at ${c.at} (after all ${COUNT} sends, it was ${victim.alive ? 'still alive: the armed point was never reached' : 'not killed by the armed SIGKILL'})`);
    if (c.victim === 'receiver' && receiver === victim) {
      receiver = await up('receiver');
    }

    await untilSeen(() => new Set(seen.map(seqOf).filter((i) => i !== undefined)).size === COUNT, `all ${COUNT} messages`);
    await new Promise((r) => setTimeout(r, 1500)); // late repeats would show now
    // One inbox entry per message (a message delivered twice would be two entries),
    // in the order sent; an entry shown again after a restart (not yet marked read) is the same entry.
    const entries = new Map();
    for (const m of seen) if (seqOf(m) !== undefined && !entries.has(m.id)) entries.set(m.id, seqOf(m));
    assert.deepEqual([...entries.values()], [...Array(COUNT).keys()], `each message once, in order (inbox ids ${JSON.stringify([...entries])})`);
  });
}
