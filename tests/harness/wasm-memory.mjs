// Read an in-process node's wasm linear memory size.
//
//   const { node, probe } = await createProbedNode(createNode, opts);
//   probe.bytes(node)     // node.memoryBytes() when the host exposes it, else
//                         // the captured memories' current size
//   probe.source(node)    // 'node' or 'probe'
//
// The host exposes the engine's memory size as `node.memoryBytes()` (added
// with the red-team fixes). For a host without it, the node is created again
// with a core loader that captures the core's WebAssembly.Memory by wrapping
// WebAssembly.instantiate while the core is instantiated (jco's glue calls it
// with each core module). Create the probed node on its own (not concurrently
// with other nodes) so only its memory is captured.
import { loadCore } from '../../js-host/core.js';

export function memoryProbe() {
  const memories = [];
  async function loadCoreImpl(opts) {
    const orig = WebAssembly.instantiate;
    WebAssembly.instantiate = async function patched(...args) {
      const r = await orig.apply(this, args);
      const inst = r instanceof WebAssembly.Instance ? r : r?.instance;
      for (const v of Object.values(inst?.exports ?? {})) if (v instanceof WebAssembly.Memory) memories.push(v);
      return r;
    };
    try {
      return await loadCore(opts);
    } finally {
      WebAssembly.instantiate = orig;
    }
  }
  return {
    loadCoreImpl,
    /** How the size is read: 'node' (the host's own accessor) or 'probe'. */
    source(node) {
      return hostBytes(node) !== undefined ? 'node' : 'probe';
    },
    bytes(node) {
      const own = hostBytes(node);
      if (own !== undefined) return own;
      if (!memories.length) throw new Error('memoryProbe: no wasm memory captured (was the node created with probe.loadCoreImpl?)');
      return memories.reduce((s, m) => s + m.buffer.byteLength, 0);
    },
  };
}

function hostBytes(node) {
  if (typeof node?.memoryBytes !== 'function') return undefined;
  const b = Number(node.memoryBytes());
  return Number.isFinite(b) && b > 0 ? b : undefined;
}

/**
 * createNode(opts) as is when the host reports its memory; otherwise stopped
 * and created again on the same state directory with the probing loader.
 */
export async function createProbedNode(createNode, opts) {
  const probe = memoryProbe();
  let node = await createNode(opts);
  if (hostBytes(node) === undefined) {
    await node.stop();
    node = await createNode({ ...opts, loadCoreImpl: probe.loadCoreImpl });
  }
  return { node, probe };
}
