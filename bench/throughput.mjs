// One pair, one direction: the throughput burst that bench/mesh.mjs and
// bench/placement.mjs both run, for our driver processes and for the AGT
// Python peers, measured the same way: from the first send until the
// receiver has printed the last message, all in the bench process.
import { within } from './lifecycle.mjs';

/**
 * Our pair (tests/drivers/mesh-node-client.mjs handles, up and settled): one
 * warm-up message, then `count` messages `c` -> `d`, `window` mesh_send
 * calls in flight (1: each waits for the one before).
 * @returns {Promise<{count: number, totalMs: number, perSec: number, sendMs: number, sendPerSec: number,
 *   receiverCommits: number, sender: object, receiver: object}>} receiverCommits: the
 *   receiver's commits per message; sender/receiver: their `mesh_identity` stats after the burst
 */
export async function oursBurst(c, d, { count, window = 1, tag, stepTimeout, burstTimeout }) {
  const warm = await within(c.request({ cmd: 'send', to: d.did, message: { type: 'warmup' } }), stepTimeout, `${tag}: warm-up send`);
  if (!warm.ok) throw new Error(`${tag}: warm-up send failed: ${warm.error}`);
  await within(new Promise((r) => d.on('message', function on(m) {
    if (m.payload?.type === 'warmup') { d.off('message', on); r(); }
  })), stepTimeout, `${tag}: warm-up message`);
  const before = (await within(d.request({ cmd: 'identity' }), stepTimeout, `${tag}: receiver stats`)).store;
  let got = 0;
  let lastAt = 0;
  const allIn = new Promise((r) => d.on('message', (m) => {
    if (m.payload?.type !== 'bench') return;
    got++;
    lastAt = performance.now();
    if (got === count) r();
  }));
  const t0 = performance.now();
  const burst = await within(c.request({ cmd: 'burst', to: d.did, count, tag, window }), burstTimeout, `${tag}: burst`);
  const sendMs = performance.now() - t0;
  if (!burst.ok) throw new Error(`${tag}: burst failed: ${JSON.stringify(burst)}`);
  await within(allIn, burstTimeout, () => `${tag}: all ${count} messages (${got} so far)`);
  const totalMs = lastAt - t0;
  const [cs, ds] = await within(Promise.all([c.request({ cmd: 'identity' }), d.request({ cmd: 'identity' })]), stepTimeout, `${tag}: stats`);
  return {
    count,
    totalMs,
    perSec: count / (totalMs / 1000),
    sendMs,
    sendPerSec: count / (sendMs / 1000),
    receiverCommits: (ds.store.commits - before.commits) / count,
    sender: cs.stats,
    receiver: ds.stats,
  };
}

/**
 * The AGT Python pair (tests/peers/agt_peer.mjs handles, up and settled):
 * one warm-up message, then `count` send commands written to `r` at once
 * (the peer sends them one by one), received by `s`.
 * @returns {Promise<{count: number, totalMs: number, perSec: number, sendMs: number, sendPerSec: number}>}
 */
export async function agtBurst(r, s, { count, tag, stepTimeout, burstTimeout }) {
  r.send(s.did, { type: 'warmup' });
  await s.next((e) => e.event === 'message' && e.payload?.type === 'warmup', stepTimeout, 'warmup');
  const t0 = performance.now();
  for (let n = 0; n < count; n++) r.send(s.did, { type: 'bench', tag, n });
  let lastSent = 0;
  const sentAll = (async () => {
    for (let n = 0; n < count; n++) await r.next((e) => e.event === 'sent' || e.event === 'error', burstTimeout, 'sent');
    lastSent = performance.now();
  })();
  sentAll.catch(() => {}); // awaited below; a failure first seen by the receive loop is not unhandled
  let lastAt = 0;
  for (let n = 0; n < count; n++) {
    await s.next((e) => e.event === 'message' && e.payload?.type === 'bench', burstTimeout, `bench message ${n}`);
    lastAt = performance.now();
  }
  await sentAll;
  const totalMs = lastAt - t0;
  const sendMs = lastSent - t0;
  return { count, totalMs, perSec: count / (totalMs / 1000), sendMs, sendPerSec: count / (sendMs / 1000) };
}
