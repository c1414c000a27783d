// Red-team regression, finding 1 (memory), through the REAL relay and
// registry: a stranger (a raw AgentMesh client with its own identity; the
// victim accepts sessions from anyone, the default) opens a session and sends
// 40 messages of ~3 MB each. The victim's wasm memory must stay bounded, the
// inbox must refuse a sender beyond a 32 MiB unread byte quota, and every
// record in the state directory must be sealed (no plaintext at rest).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { createProbedNode } from './harness/wasm-memory.mjs';
import { rawPeer } from './peers/raw_peer.mjs';
import { createNode } from '../js-host/node-host.js';
import { allRecords } from './harness/state-db.mjs';

const MiB = 1024 * 1024;
const COUNT = 40;
// ~3 MB of JSON per message: under the engine's 4 MiB frame limit once
// encrypted and base64-encoded (4/3 growth plus the frame's fields).
const CONTENT_BYTES = 3_000_000;

let srv;
const dirs = [];
const nodes = [];
const peers = [];

before(async () => {
  srv = await startServers();
});
after(async () => {
  for (const p of peers) await p.close().catch(() => {});
  for (const n of nodes) await n.stop().catch(() => {});
  await srv?.stop();
  if (!process.env.KARS_KEEP_TMP) for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function tmp(name) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-rt-mem-${name}-`));
  dirs.push(d);
  return d;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every file under dir except state.key, lock files and the files/ area (state.db and its WAL and shm among them). */
function recordFiles(dir) {
  const out = [];
  const walk = (d, rel) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (!rel && (e.name === 'state.key' || e.name === 'files')) continue;
      if (e.name === 'lock' || e.name.endsWith('.lock')) continue;
      if (e.isDirectory()) walk(path.join(d, e.name), r);
      else if (e.isFile()) out.push({ rel: r, full: path.join(d, e.name) });
    }
  };
  walk(dir, '');
  return out;
}

test('finding 1: 40 messages of ~3 MB from a stranger keep the wasm memory bounded, the inbox refuses over a 32 MiB unread quota, and nothing lies unsealed at rest', { timeout: 150_000 }, async () => {
  const victimDir = tmp('victim');
  // Created alone, so a probe (for a host without memoryBytes) captures only the victim's memory.
  const { node: victim, probe } = await createProbedNode(createNode, {
    stateDir: victimDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name: 'mem-victim', log: () => {},
  });
  nodes.push(victim);
  for (let i = 0; i < 100; i++) {
    const m = (await victim.callTool('mesh_identity', {})).details.mesh;
    if (m.registered && m.connected) break;
    await sleep(100);
  }
  const inboxDiag = async () => (await victim.callTool('mesh_inbox', { limit: 1, from: 'did:mesh:00000000000000000000000000000000' })).details.mesh.diagnostics;
  const d0 = await inboxDiag();
  const mem0 = probe.bytes(victim);

  const stranger = await rawPeer({ relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
  peers.push(stranger);
  const session = await stranger.openSession(victim.did);

  // Each message: a marker, then random text (no two alike, nothing compressible).
  const markers = [];
  const samples = [];
  let peak = mem0;
  for (let i = 0; i < COUNT; i++) {
    const marker = `RT1-PLAINTEXT-${randomBytes(12).toString('hex')}`;
    const filler = randomBytes(Math.ceil(CONTENT_BYTES * 3 / 4)).toString('base64').slice(0, CONTENT_BYTES - marker.length - 40);
    markers.push(marker);
    samples.push(filler.slice(100_000, 100_064));
    await stranger.encrypted(session, { type: 'message', content: `${marker} ${filler}` });
    // A little pacing so the single-threaded victim keeps up and we can sample memory.
    if (i % 4 === 3) {
      await sleep(150);
      peak = Math.max(peak, probe.bytes(victim));
    }
  }
  // Wait until the victim has dealt with every message (taken or refused).
  let d;
  const deadline = Date.now() + 60_000;
  for (;;) {
    d = await inboxDiag();
    peak = Math.max(peak, probe.bytes(victim));
    const handled = (d.received_total - d0.received_total) + (d.refused_over_quota - d0.refused_over_quota);
    if (handled >= COUNT || Date.now() > deadline) break;
    await sleep(500);
  }
  peak = Math.max(peak, probe.bytes(victim));
  const taken = d.received_total - d0.received_total;
  const refused = d.refused_over_quota - d0.refused_over_quota;
  const growth = peak - mem0;
  // Every message must have been dealt with: a node that stalled or dropped
  // frames unseen would otherwise pass the memory bound below.
  assert.equal(taken + refused, COUNT, `after 60 s the victim had taken ${taken} and refused ${refused} of the ${COUNT} messages sent`);
  const info = `memory ${(mem0 / MiB).toFixed(1)} → ${(peak / MiB).toFixed(1)} MiB (read via ${probe.source(victim)}); taken ${taken}, refused_over_quota ${refused}`;

  // Bounded memory: payloads must not be kept in the engine's memory.
  assert.ok(growth < 64 * MiB, `wasm memory grew by ${(growth / MiB).toFixed(1)} MiB (limit 64 MiB): ${info}`);
  console.log(`# measured: ${info}`);
  // The per-sender unread byte quota (32 MiB): the rest is refused.
  assert.ok(refused > 0, `no message refused over the 32 MiB unread quota after ${((taken * CONTENT_BYTES) / MiB).toFixed(0)} MiB unread from one sender: ${info}`);
  assert.ok(taken * CONTENT_BYTES <= 32 * MiB + CONTENT_BYTES, `${taken} messages of ~3 MB taken from one sender (over 32 MiB unread): ${info}`);
  const unread = (await victim.callTool('mesh_inbox', { limit: 1, from: stranger.did })).details.mesh;
  assert.ok(unread.unread * CONTENT_BYTES <= 32 * MiB + CONTENT_BYTES, `unread from the stranger: ${unread.unread}`);

  // At rest: every record in the state database is sealed (version byte 1 or
  // 2, >= 29 bytes; 3 only for an outbox entry keeping a file chunk's
  // encrypted frame after its sealed fields), and no message text appears in
  // any file of the state directory (the database, its WAL and shared
  // memory, anything else).
  const bad = [];
  const records = allRecords(victimDir);
  assert.ok(records.length > 0);
  for (const [key, b] of records) {
    const trailer = b[0] === 3 && key.startsWith('outbox/') && b.length >= 33;
    if (!trailer && (b.length < 29 || (b[0] !== 1 && b[0] !== 2))) bad.push(`record ${key}: not a sealed record (${b.length} bytes, first byte ${b[0]})`);
  }
  const files = recordFiles(victimDir);
  assert.ok(files.some((f) => f.rel === 'state.db'), files.map((f) => f.rel).join(', '));
  for (const f of files) {
    const b = fs.readFileSync(f.full);
    for (let i = 0; i < markers.length; i++) {
      if (b.includes(markers[i]) || b.includes(samples[i])) {
        bad.push(`${f.rel}: holds the plaintext of message ${i}`);
        break;
      }
    }
  }
  assert.deepEqual(bad, [], bad.join('\n'));
});
