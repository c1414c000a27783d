// A kars in-cluster offload sandbox as docs/spec/kars-mesh-plugin.md §7
// describes it (Azure/kars `runtimes/openclaw/src/core/agt-offload.ts`): an
// AGT peer (tests/peers/agt_peer.py, end-to-end encrypted) registered with
// its sandbox name as its first capability, working for the requester the
// controller named (OFFLOAD_PARENT_AMID, the requester's DID).
//
//   mode 'hello':  offload_hello → progress → acks each input file_transfer
//                  → output file_transfer → offload_done
//   mode 'legacy': no hello; mesh:ping → mesh:pong, each file_transfer →
//                  file_transfer_ack, offload_task → task_received → output
//                  file_transfer → offload_done
//   mode 'silent': registers and says nothing (a sandbox that never answers)
//
//   const s = await startKarsSandbox({ relayUrl, registryUrl, name, requestId, parentDid, task, mode });
//   s.did, s.received (payloads from the requester), await s.stop()
import { createHash } from 'node:crypto';
import { spawnAgtPeer } from './agt_peer.mjs';

const sha256hex = (b) => createHash('sha256').update(b).digest('hex');

export async function startKarsSandbox({ relayUrl, registryUrl, name, requestId, parentDid, task, mode = 'hello', inputWaitMs = 4000 }) {
  const peer = await spawnAgtPeer({ relayUrl, registryUrl, capabilities: [name] });
  const received = [];
  const inputs = [];
  const started = Date.now();
  const ts = () => new Date().toISOString();
  const send = (payload) => peer.send(parentDid, payload);
  let stopped = false;
  let ran = false;

  const ackInput = (p) => {
    const bytes = Buffer.from(p.file_data ?? '', 'base64');
    inputs.push({ name: p.file_name, size: bytes.length, sha256: sha256hex(bytes) });
    send({ type: 'file_transfer_ack', file_name: p.file_name, success: true, saved_to: `/workspace/inbox/${p.file_name}`, timestamp: ts() });
  };

  const run = async () => {
    if (ran) return;
    ran = true;
    send({ type: 'offload_progress', request_id: requestId, stage: 'executing', message: 'Working on the task', pct: 10, from_agent: name, timestamp: ts() });
    const report = `task: ${task}\n${inputs.map((f) => `${f.name} ${f.size} ${f.sha256}`).join('\n')}\n`;
    const data = Buffer.from(report, 'utf8');
    send({
      type: 'file_transfer', file_name: 'result.md', file_path: 'outputs/result.md', file_data: data.toString('base64'),
      size_bytes: data.length, description: `Output of ${requestId}`, from_agent: name, timestamp: ts(),
    });
    send({
      type: 'offload_done', request_id: requestId, summary: `done: ${inputs.length} input(s)`, output_files: ['result.md'],
      output_file_contents: [], tokens_used: { prompt: 0, completion: 0 }, duration_seconds: Math.round((Date.now() - started) / 1000),
      from_agent: name, timestamp: ts(),
    });
  };

  (async () => {
    if (mode === 'hello') {
      send({ type: 'offload_hello', request_id: requestId, from_agent: name, task_preview: String(task).slice(0, 200), started_at: ts(), message: `Sandbox ${name} is up.` });
      // The hello path's inputs come best-effort after the hello.
      setTimeout(() => { if (!stopped) run(); }, inputWaitMs).unref();
    }
    while (!stopped) {
      const ev = await peer.next((e) => e.event === 'message' && e.from === parentDid, 3_600_000, 'message').catch(() => null);
      if (!ev) return;
      const p = ev.payload;
      received.push(p);
      if (mode === 'silent') continue;
      if (p?.type === 'file_transfer') ackInput(p);
      else if (p?.type === 'mesh:ping' && mode === 'legacy') send({ type: 'mesh:pong', nonce: p.nonce, from_agent: name, timestamp: ts() });
      else if (p?.type === 'offload_task' && mode === 'legacy' && p.request_id === requestId) {
        send({ type: 'task_received', request_id: requestId, from_agent: name, accepted_at: ts() });
        run();
      }
    }
  })();

  return {
    did: peer.did,
    received,
    inputs,
    peer,
    stop() {
      stopped = true;
      return peer.close();
    },
  };
}
