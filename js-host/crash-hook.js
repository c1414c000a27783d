// Tests only: kill this process at a chosen point of the group commit, to
// check what a crash there leaves (tests/durability.test.mjs). Set
//   KARS_MESH_TEST_CRASH_AT=store:N[@K]   SIGKILL when a batch has made its
//                                         N-th store (before its commit), the
//                                         K-th time that happens (default 1)
//   KARS_MESH_TEST_CRASH_AT=commit:N[@K]  SIGKILL right after the commit of a
//                                         batch with at least N stores, before
//                                         any of its commands leaves
// Unset (always, outside tests) it costs one comparison per store.

/** The hook for js-host/event-loop.js, or undefined when the variable is not set. */
export function crashHookFromEnv(env = process.env) {
  const spec = env.KARS_MESH_TEST_CRASH_AT;
  if (!spec) return undefined;
  const m = /^(store|commit):([0-9]+)(?:@([0-9]+))?$/.exec(spec);
  if (!m) throw new Error(`KARS_MESH_TEST_CRASH_AT=${spec}: expected store:N[@K] or commit:N[@K]`);
  const [, point, n, k] = m;
  const at = Number(n);
  let left = Number(k ?? 1);
  return (where, count) => {
    if (where !== point || (point === 'store' ? count !== at : count < at)) return;
    if (--left > 0) return;
    process.kill(process.pid, 'SIGKILL');
  };
}
