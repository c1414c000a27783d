// Follow an offload's phases through `offload_status {wait_seconds,
// after_events}`: each call waits for news (no polling). `status(args)`
// returns the tool result: an engine node's callTool, or a Gateway invoke.
import assert from 'node:assert/strict';

export async function followOffload(status, { until = ['done', 'error'], timeoutMs = 90_000 } = {}) {
  const seen = [];
  let after = 0;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await status({ wait_seconds: 20, after_events: after });
    const m = r.details.mesh;
    const text = r.content[0].text;
    if (!m.events) return { seen, last: m, text };
    // A waiting call answers with news, or because the offload ended.
    assert.ok(m.events_total > after || until.includes(m.phase), `offload_status answered without news: ${JSON.stringify(m)}`);
    for (const e of m.events) if (e.seq > after) seen.push(e.phase);
    after = m.events_total;
    if (until.includes(m.phase)) return { seen, last: m, text };
  }
  throw new Error(`offload did not reach ${until} in time; phases: ${seen.join(' ')}`);
}
