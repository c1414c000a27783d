// Wait until a node is registered with the registry and connected to the
// relay, checking every 100 ms; fail with its name after `tries` checks.
export async function untilRegistered(node, name = 'node', tries = 100) {
  for (let i = 0; i < tries; i++) {
    const m = (await node.callTool('mesh_identity', {})).details.mesh;
    if (m.registered && m.connected) return node;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`${name} did not register and connect`);
}
