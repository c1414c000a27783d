// Durability: two kars-mesh clients, each in its own child process
// (tests/drivers/mesh-node.mjs), stream N = 1,000 numbered messages to each
// other at the same time through the REAL relay, with random 0–5 ms pauses.
// During the stream, at random points: one client is SIGKILLed and restarted
// on the same state dir, twice; the relay is restarted once (it loses every
// frame it held).
//
// A message counts as sent when its mesh_send returned ok. A send that got
// no answer because the process was killed mid-call is "in doubt" and is
// retried with the same number after the restart. Each receiver prints its
// inbox (mesh_inbox wait_seconds, in a loop) as JSON lines.
//
// Asserts, per direction: the receiver got exactly the numbers 0..N-1, each
// exactly once, in order (so the count is exactly N), all with evidence
// "encrypted" from the right DID; and the two kills and the relay restart
// really happened while messages were flowing.
//
//   node --test tests/durability.test.mjs
//   DURABILITY_SEED=123 node --test tests/durability.test.mjs   (replay a schedule)
//   DURABILITY_N=200 ...                                         (shorter run)
//   DURABILITY_KEEP=1 ...                                        (keep state dirs and logs)
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { startServers } from './harness/servers.mjs';
import { spawnMeshNode } from './drivers/mesh-node-client.mjs';

const N = Number(process.env.DURABILITY_N ?? 1000);
const SEED = Number(process.env.DURABILITY_SEED ?? Math.floor(Math.random() * 2 ** 31));
const STREAM_BOUND_MS = 240_000; // senders must be done by then
const TAIL_MS = 180_000; // then every message must have arrived within this
const SETTLE_MS = 5_000; // after the last one: watch for late duplicates

// mulberry32: a reproducible schedule from DURABILITY_SEED
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = prng(SEED);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let srv;
let dir;
let stopping = false;
let keepDir = process.env.DURABILITY_KEEP === '1'; // kept (with the logs) when the test fails
let t0;
const secs = () => ((performance.now() - t0) / 1000).toFixed(1);
const timeline = [];
function note(text) {
  const line = `t=${secs()}s ${text}`;
  timeline.push(line);
  console.log(`# ${line}`);
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kars-durability-'));
  srv = await startServers();
});

const sides = [];
after(async () => {
  stopping = true;
  await Promise.allSettled(sides.map((s) => s.node?.kill()));
  await srv?.stop();
  if (dir && !keepDir) rmSync(dir, { recursive: true, force: true });
  else if (dir) console.log(`# state dirs and logs kept in ${dir}`);
});

/** One client: its state dir survives; its driver process is replaced on each kill. */
class Side {
  constructor(name) {
    this.name = name;
    this.stateDir = path.join(dir, name);
    this.node = null;
    this.incarnation = 0;
    this.did = null;
    this.received = []; // {n, from, id, evidence, inc, at}
    this.sent = []; // numbers whose send returned ok, in order
    this.inDoubt = []; // numbers whose send was cut by a kill (retried)
    this.sendErrors = []; // error results (retried)
    this.killing = false;
    this.unexpected = null;
    this.stderrs = [];
    this.upWaiters = [];
    sides.push(this);
  }

  async start() {
    this.incarnation += 1;
    const inc = this.incarnation;
    // Listeners go in before the driver starts: a restarted driver prints the
    // inbox entries that survived the kill right after 'ready', often in the
    // same stdout chunk, before an `await` here would resume.
    const node = await spawnMeshNode({
      stateDir: this.stateDir,
      relayUrl: srv.relayUrl,
      registryUrl: srv.registryUrl,
      name: `durability-${this.name}`,
      label: `${this.name}#${inc}`,
      buffer: false,
      stderrTail: 8 * 1024 * 1024,
      on: {
        message: (m) => {
          // The same inbox entry shown again after a kill (peek, then mark read)
          // is one delivery; a second entry for the same number is a duplicate.
          this.shownIds ??= new Set();
          if (this.shownIds.has(m.id)) return;
          this.shownIds.add(m.id);
          this.received.push({ n: m.payload?.n, type: m.payload?.type, sender: m.payload?.from, from: m.from, id: m.id, evidence: m.evidence, inc, at: secs() });
        },
      },
    });
    if (this.did && node.did !== this.did) throw new Error(`${this.name}: DID changed across restart`);
    this.did = node.did;
    this.stderrs.push({ inc, get: node.stderr });
    node.on('exit', (info) => {
      if (!this.killing && !stopping) {
        this.unexpected = `${this.name}#${inc} exited unexpectedly (${info.signal ?? info.code})`;
        note(this.unexpected);
      }
    });
    this.node = node;
    for (const w of this.upWaiters.splice(0)) w();
    return node;
  }

  waitUp() {
    if (this.node?.alive) return Promise.resolve();
    return new Promise((r) => this.upWaiters.push(r));
  }

  async killAndRestart(downMs) {
    this.killing = true;
    const old = this.node;
    await old.kill();
    note(`SIGKILL ${this.name}#${this.incarnation} (pid ${old.pid}); down for ${downMs} ms`);
    await sleep(downMs);
    this.killing = false;
    const t = performance.now();
    await this.start();
    note(`${this.name}#${this.incarnation} up again (same state dir, same DID) in ${Math.round(performance.now() - t)} ms`);
  }
}

async function sender(from, to) {
  let i = 0;
  while (i < N) {
    if (from.unexpected || to.unexpected) throw new Error(from.unexpected ?? to.unexpected);
    if (!from.node?.alive) {
      await from.waitUp();
      continue;
    }
    const drv = from.node;
    from.inFlight = i;
    let r;
    try {
      // The number doubles as the idempotency key: a send cut off by a kill
      // is retried with it, and the engine does not send it a second time.
      r = await drv.request({ cmd: 'send', to: to.did, message: { type: 'seq', from: from.name, n: i }, key: `${from.name}-${i}` });
    } catch (e) {
      from.inFlight = undefined;
      if (!e.killed && !from.killing) throw e;
      from.inDoubt.push(i);
      note(`${from.name}: send #${i} was cut by the kill (in doubt); it is retried after the restart`);
      await from.waitUp();
      if (!from.node.alive) await sleep(50); // never spin
      continue; // same number again
    }
    from.inFlight = undefined;
    if (!r.ok) {
      from.sendErrors.push({ n: i, error: r.error, at: secs() });
      note(`${from.name}: send #${i} answered an error (retrying): ${r.error}`);
      await sleep(250);
      continue;
    }
    from.sent.push(i);
    i++;
    await sleep(Math.floor(rand() * 6)); // 0–5 ms
  }
  note(`${from.name}→${to.name}: all ${N} sends returned ok`);
}

/** Describe how a received sequence differs from 0..N-1. */
function describe(ns, inDoubt) {
  const count = new Map();
  for (const n of ns) count.set(n, (count.get(n) ?? 0) + 1);
  const dups = [...count].filter(([, c]) => c > 1).map(([n, c]) => `${n}×${c}${inDoubt.includes(n)
    ? ' (in doubt: its mesh_send was cut by a kill and retried with the same idempotency key, which must not send it twice)'
    : ''}`);
  const missing = [];
  for (let k = 0; k < N; k++) if (!count.has(k)) missing.push(k);
  const inversions = [];
  for (let k = 1; k < ns.length; k++) if (ns[k] < ns[k - 1]) inversions.push(`[${k - 1}]=${ns[k - 1]} then [${k}]=${ns[k]}`);
  return { dups, missing, inversions };
}

test(`durability: ${N} messages each way, 2× SIGKILL+restart of a client, 1× relay restart`,
  { timeout: STREAM_BOUND_MS + TAIL_MS + 120_000 }, async () => {
    console.log(`# seed ${SEED} (replay with DURABILITY_SEED=${SEED}), N=${N}`);
    t0 = performance.now();
    const A = new Side('A');
    const B = new Side('B');
    await Promise.all([A.start(), B.start()]);
    note(`A ${A.did}, B ${B.did}`);

    // The schedule: two kills and one relay restart at random points of the
    // stream (fractions of the 2N sends), victims and downtimes at random.
    const plan = [
      { kind: 'kill', at: 0.1 + rand() * 0.65, victim: rand() < 0.5 ? A : B, downMs: 100 + Math.floor(rand() * 1400) },
      { kind: 'kill', at: 0.1 + rand() * 0.65, victim: rand() < 0.5 ? A : B, downMs: 100 + Math.floor(rand() * 1400) },
      { kind: 'relay', at: 0.1 + rand() * 0.65 },
    ].sort((x, y) => x.at - y.at);
    note(`plan: ${plan.map((p) => `${p.kind}${p.victim ? ` ${p.victim.name}` : ''} at ${Math.round(p.at * 100)}% of the 2N sends`).join(', ')}`);
    const done = [];
    let sendersDone = false;

    // On failure: keep the state dirs, write every log there, print the essentials.
    const writeLogs = () => {
      for (const s of [A, B]) {
        writeFileSync(path.join(dir, `${s.name}-arrivals.json`), JSON.stringify(s.received, null, 0).replace(/},{/g, '},\n{'));
        for (const { inc, get } of s.stderrs) writeFileSync(path.join(dir, `${s.name}${inc}-stderr.log`), get());
      }
      writeFileSync(path.join(dir, 'servers.log'), srv.logs());
      writeFileSync(path.join(dir, 'timeline.txt'), timeline.join('\n'));
    };
    const dump = () => {
      keepDir = true;
      writeLogs();
      console.log(`--- timeline ---\n${timeline.join('\n')}`);
      for (const s of [A, B]) {
        const got = s.received.filter((m) => m.type === 'seq');
        // Around any anomaly: the arrival record with incarnation and time.
        const idx = got.findIndex((m, k) => m.n !== k);
        if (idx >= 0) {
          console.log(`--- ${s.name}: arrivals ${Math.max(0, idx - 5)}..${idx + 30} (n, frame id, incarnation, t) ---`);
          for (const m of got.slice(Math.max(0, idx - 5), idx + 30)) console.log(`  ${m.n} ${m.id} #${m.inc} t=${m.at}s`);
        }
        for (const { inc, get } of s.stderrs) {
          const lines = get().split('\n').filter((l) => !/ info\] /.test(l) || /resen|gave up|decrypt|held|restart|KNOCK|session/i.test(l));
          console.log(`--- ${s.name}#${inc} stderr (warnings and up, last 40 lines; all in ${dir}) ---\n${lines.slice(-40).join('\n')}`);
        }
      }
    };

    const progress = setInterval(() => {
      const rb = B.received.filter((m) => m.type === 'seq').length;
      const ra = A.received.filter((m) => m.type === 'seq').length;
      console.log(`# t=${secs()}s sent A→B ${A.sent.length}/${N}, B→A ${B.sent.length}/${N}; received at B ${rb}, at A ${ra}`);
    }, 2000);

    // Each disruption starts when the stream reaches its point; they may
    // overlap (a kill during the relay restart is fine), but two kills of
    // the same client run one after the other.
    const chains = new Map();
    const runStep = async (step) => {
      const threshold = Math.floor(step.at * 2 * N);
      while (A.sent.length + B.sent.length < threshold) {
        if (A.unexpected || B.unexpected || sendersDone) break;
        await sleep(1);
      }
      const at = A.sent.length + B.sent.length;
      const duringStream = A.sent.length < N || B.sent.length < N;
      if (step.kind === 'kill') {
        const prev = chains.get(step.victim) ?? Promise.resolve();
        const mine = prev.then(() => step.victim.killAndRestart(step.downMs));
        chains.set(step.victim, mine);
        await mine;
      } else {
        note(`restarting the relay (sent so far: ${at})`);
        const t = performance.now();
        await srv.restartRelay();
        note(`relay back in ${Math.round(performance.now() - t)} ms`);
      }
      done.push({ ...step, victim: step.victim?.name, atSends: at, duringStream });
    };
    const controller = Promise.all(plan.map(runStep));

    try {
      const streams = Promise.all([sender(A, B), sender(B, A)]);
      let timer;
      await Promise.race([
        streams,
        new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`senders not done after ${STREAM_BOUND_MS} ms`)), STREAM_BOUND_MS); }),
      ]);
      clearTimeout(timer);
      sendersDone = true;
      await controller;
      note(`senders done; waiting (at most ${TAIL_MS / 1000} s) for the tail`);

      const seqAt = (side) => side.received.filter((m) => m.type === 'seq').length;
      const tailEnd = performance.now() + TAIL_MS;
      while ((seqAt(A) < N || seqAt(B) < N) && performance.now() < tailEnd) {
        if (A.unexpected || B.unexpected) break;
        await sleep(100);
      }
      note(`tail: received at B ${seqAt(B)}/${N}, at A ${seqAt(A)}/${N}; settling ${SETTLE_MS / 1000} s for late duplicates`);
      await sleep(SETTLE_MS);
    } catch (e) {
      clearInterval(progress);
      dump();
      throw e;
    } finally {
      clearInterval(progress);
    }

    // Engine counters (this incarnation only) for the report.
    const stats = {};
    for (const s of [A, B]) {
      try {
        const r = await s.node.request({ cmd: 'identity' });
        stats[s.name] = r.stats;
      } catch (e) {
        stats[s.name] = String(e.message);
      }
    }
    console.log(`# engine stats (last incarnation): ${JSON.stringify(stats)}`);
    // What the engines warned about, grouped (ids and numbers masked).
    for (const side of [A, B]) {
      for (const { inc, get } of side.stderrs) {
        const groups = new Map();
        for (const l of get().split('\n')) {
          const m = / (warn|error)\] (.*)$/.exec(l);
          if (!m) continue;
          const k = `${m[1]}: ${m[2].replace(/did:mesh:[0-9a-f]{32}/g, '<did>').replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '<id>').replace(/\d+/g, 'N')}`;
          groups.set(k, (groups.get(k) ?? 0) + 1);
        }
        for (const [k, c] of groups) console.log(`# ${side.name}#${inc} ${c}× ${k.slice(0, 300)}`);
      }
    }
    console.log(`# in doubt (send cut by a kill, retried): A ${JSON.stringify(A.inDoubt)}, B ${JSON.stringify(B.inDoubt)}`);
    console.log(`# send error results (retried): A ${A.sendErrors.length}, B ${B.sendErrors.length}`);
    stopping = true;
    await Promise.all([A.node.stop(), B.node.stop()]);

    try {
      assert.equal(A.unexpected ?? B.unexpected ?? null, null, 'no driver died on its own');
      assert.equal(done.length, 3, 'both kills and the relay restart happened');
      assert.ok(done.every((d) => d.duringStream), `every disruption happened while sending: ${JSON.stringify(done)}`);
      assert.equal(A.sent.length, N);
      assert.equal(B.sent.length, N);
      for (const [recv, snd] of [[B, A], [A, B]]) {
        const got = recv.received.filter((m) => m.type === 'seq');
        const ns = got.map((m) => m.n);
        const d = describe(ns, snd.inDoubt);
        const expected = Array.from({ length: N }, (_, k) => k);
        const summary = `${snd.name}→${recv.name}: received ${ns.length}; duplicates: ${d.dups.join(', ') || 'none'}; `
          + `missing: ${d.missing.slice(0, 50).join(', ') || 'none'}${d.missing.length > 50 ? ` (+${d.missing.length - 50})` : ''}; `
          + `out of order: ${d.inversions.slice(0, 20).join('; ') || 'none'}`;
        console.log(`# ${summary}`);
        assert.ok(got.every((m) => m.from === snd.did && m.sender === snd.name), `${summary}: every message from ${snd.name}'s DID`);
        assert.ok(got.every((m) => m.evidence === 'encrypted'), `${summary}: every message encrypted`);
        assert.equal(recv.received.length, got.length, `${recv.name} received only the stream: ${JSON.stringify(recv.received.filter((m) => m.type !== 'seq'))}`);
        assert.deepEqual(ns, expected, `exactly once and in order, ${summary}`);
      }
    } catch (e) {
      dump();
      throw e;
    }
    if (keepDir) writeLogs();
  });
