// Read an in-process node's wasm linear memory size.
//
//   const probe = memoryProbe();
//   const node = await createNode({ ..., loadCoreImpl: probe.loadCoreImpl });
//   probe.bytes(node)     // node.memoryBytes() when the host exposes it, else
//                         // the captured memories' current size
//
// TODO(engine/js-host): the host is to expose the engine's memory size (e.g.
// `node.memoryBytes()`); until it does, this probe captures the core's
// WebAssembly.Memory by wrapping WebAssembly.instantiate while the core is
// instantiated (jco's glue calls it with each core module). Create the probed
// node on its own (not concurrently with other nodes) so only its memory is
// captured.
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
      return typeof node?.memoryBytes === 'function' ? 'node' : 'probe';
    },
    bytes(node) {
      if (typeof node?.memoryBytes === 'function') return Number(node.memoryBytes());
      if (!memories.length) throw new Error('memoryProbe: no wasm memory captured (was the node created with probe.loadCoreImpl?)');
      return memories.reduce((s, m) => s + m.buffer.byteLength, 0);
    },
  };
}
