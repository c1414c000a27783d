// Large offloads stay within the core's memory cap (1 GiB, set by
// scripts/build.sh because the jco 1.11.2 glue misreads pointers past 2 GiB):
// three inputs of just under 30 MiB go to a real sandbox and come back as
// outputs (its --exec copies them), through the real relay. One of them is
// the largest file that fits in 80 chunks of 512 KiB once base64-encoded
// (31,454,208 bytes), both ways; an output one byte larger, and one of
// 30 MiB less a byte (under the original's limit, but 81 chunks: it used to
// be dropped without a word), are not sent and are named, with the reason,
// in the final status. Before the paced
// sender every chunk of every file was encrypted and queued in one engine
// call: one such file peaked at 473 MiB of core memory, three stopped the
// node at the cap. Now a file is chunked when its turn comes and 16 messages
// per peer wait for a receipt at a time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServers } from './harness/servers.mjs';
import { createNode } from '../js-host/node-host.js';
import { killSandboxes } from '../js-host/jobs.js';
import { followOffload } from './harness/follow.mjs';
import { untilRegistered } from './harness/registered.mjs';

let srv;
const dirs = [];
const nodes = [];
let sandboxDir;

function tmp(name) {
  const d = mkdtempSync(path.join(tmpdir(), `kars-large-${name}-`));
  dirs.push(d);
  return d;
}

before(async () => {
  srv = await startServers();
  sandboxDir = tmp('sandboxes');
});
after(async () => {
  for (const n of nodes) await n.stop().catch(() => {});
  await killSandboxes(sandboxDir, { graceMs: 2000 });
  await srv?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function start(name, stateDir, extra = {}) {
  const n = await createNode({ stateDir, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {}, ...extra });
  nodes.push(n);
  return untilRegistered(n, name);
}

const sha = (b) => createHash('sha256').update(b).digest('hex');

test('three inputs of 30 MiB each way: done, every output byte for byte, core memory well under the cap', { timeout: 240_000 }, async () => {
  const ctrl = await start('ctrl-large', tmp('ctrl'), {
    role: 'controller', clusterName: 'large',
    sandboxes: {
      dir: sandboxDir,
      exec: 'cp "$KARS_INPUT_DIR"/* "$KARS_OUTPUT_DIR"/ && cd "$KARS_OUTPUT_DIR" && head -c 31454209 /dev/zero > one-more.bin && head -c 31457279 /dev/zero > almost-30mib.bin',
      progressMs: 2000,
    },
  });
  const aDir = tmp('alice');
  const alice = await start('alice-large', aDir);
  const gen = await ctrl.callTool('pair_generate', { name: 'alice', slots: 1, capabilities: 'offload', expires: '1d' });
  const paired = await alice.callTool('mesh_pair', { token: gen.details.mesh.token }, { timeoutMs: 40_000 });
  assert.match(paired.content[0].text, /^✅ Paired successfully/);

  const work = tmp('inputs');
  const inputs = [];
  for (let i = 0; i < 3; i++) {
    const bytes = randomBytes(i === 0 ? 31_454_208 : 30 * 1024 * 1024 - 4096);
    const f = path.join(work, `part${i}.bin`);
    writeFileSync(f, bytes);
    inputs.push({ name: `part${i}.bin`, path: f, sha: sha(bytes) });
  }
  let peak = 0;
  const probe = setInterval(() => { peak = Math.max(peak, alice.memoryBytes()); }, 10);
  // This thread is what a Gateway's is: the engines (alice's and the
  // controller's) run in their own threads, so chunking, sealing and storing
  // 90 MiB each way must not stall it.
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  try {
    const sub = await alice.callTool('cloud_offload', { task: 'copy the inputs back', files: inputs.map((x) => x.path) });
    assert.match(sub.content[0].text, /^☁️ Offload submitted/, sub.content[0].text);
    const { last } = await followOffload((a) => alice.callTool('offload_status', a, { timeoutMs: 30_000 }), { timeoutMs: 200_000 });
    assert.equal(last.phase, 'done', JSON.stringify(last).slice(0, 2000));
    const outs = Object.fromEntries(last.outputs.map((o) => [o.name, o]));
    for (const x of inputs) {
      const o = outs[x.name];
      assert.ok(o, `output ${x.name} missing: ${Object.keys(outs)}`);
      assert.equal(o.sha256, x.sha);
      assert.equal(sha(readFileSync(path.join(aDir, 'files', o.path))), x.sha, `${x.name} on disk`);
    }
    assert.equal(outs['part0.bin'].size, 31_454_208);
    const why = (n) => `${n} bytes; a file can be at most 31454208 bytes, what fits in 80 chunks of 512 KiB once base64-encoded`;
    assert.deepEqual(last.not_returned, [
      { name: 'almost-30mib.bin', reason: why(31457279) },
      { name: 'one-more.bin', reason: why(31454209) },
    ]);
    assert.ok(last.events.some((e) => e.text.startsWith('finished with 3 output file(s); 2 not returned (sandbox: almost-30mib.bin: 31457279 bytes;')), JSON.stringify(last.events));
    const final = (await alice.callTool('offload_status', {})).content[0].text;
    assert.ok(final.includes(`Output files NOT returned:\n  almost-30mib.bin: ${why(31457279)}\n  one-more.bin: ${why(31454209)}`), final);
  } finally {
    clearInterval(probe);
    delay.disable();
  }
  const ms = (ns) => (ns / 1e6).toFixed(1);
  console.log(`# measured: event-loop delay of the host thread during the offload: p50 ${ms(delay.percentile(50))} ms, p99 ${ms(delay.percentile(99))} ms, max ${ms(delay.max)} ms`);
  // With the engine on this thread one 30 MB input blocked it for 5.5 s; the
  // bound is far above what the engine thread gives (see the bench), far
  // below what the old design did.
  assert.ok(delay.max < 1000 * 1e6, `the host thread stalled for ${ms(delay.max)} ms`);
  // One engine call sends at most the pacer's share (1 MiB) and the chunk
  // that crosses it (a 512 KiB chunk is about 0.7 MB as a frame): a window
  // of 16 chunks (11 MB) in one call held a tool call that arrived
  // meanwhile for about a second.
  const st = alice.storeStats();
  console.log(`# measured: longest engine call ${st.maxCallMs.toFixed(0)} ms, most frame text sent by one call ${(st.maxCallSent / 1e6).toFixed(2)} MB`);
  assert.ok(st.maxCallSent > 0 && st.maxCallSent < 1048576 + 1_000_000, `one engine call sent ${st.maxCallSent} bytes of frames`);
  peak = Math.max(peak, alice.memoryBytes());
  console.log(`# measured: core memory peak ${(peak / 1048576).toFixed(0)} MiB for three 30 MiB files each way`);
  // Measured 182 MiB in six runs since an input's text is written a slice
  // at a time into a buffer of its final size (no 40 MB serialisation
  // beside it); 251 to 331 MiB before that (timing decides how many chunks
  // wait at once), 473 MiB for one file before the pacer, and three stopped
  // the node at the 1 GiB cap. The bound leaves a third for timing and
  // fails if the text is built whole again (251 and 331 MiB in three runs
  // of that build).
  assert.ok(peak < 240 * 1024 * 1024, `core memory peaked at ${(peak / 1048576).toFixed(0)} MiB`);
});
