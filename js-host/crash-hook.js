// Tests only: kill this process at a chosen point of the group commit, to
// check what a crash there leaves (tests/durability.crash-points.test.mjs).
//   KARS_MESH_TEST_CRASH_AT=store:N[:TAG][@K]   SIGKILL when a batch makes its N-th
//                                               store (before its commit) while
//                                               handling an event tagged TAG
//   KARS_MESH_TEST_CRASH_AT=commit:N[:TAG][@K]  SIGKILL right after the commit of a
//                                               batch with at least N stores (and an
//                                               event tagged TAG), before any of its
//                                               commands leaves
// K: the K-th time the point is reached (default 1). TAG: an engine event tag
// (socket-frame, tool-call, timer-fired, ...); any when absent. Unset (always,
// outside tests) it costs one comparison per store.

/** The hook for js-host/event-loop.js, or undefined when the variable is not set. */
export function crashHookFromEnv(env = process.env) {
  const spec = env.KARS_MESH_TEST_CRASH_AT;
  if (!spec) return undefined;
  const m = /^(store|commit):([0-9]+)(?::([a-z-]+))?(?:@([0-9]+))?$/.exec(spec);
  if (!m) throw new Error(`KARS_MESH_TEST_CRASH_AT=${spec}: expected store:N[:TAG][@K] or commit:N[:TAG][@K]`);
  const [, point, n, tag, k] = m;
  const at = Number(n);
  let left = Number(k ?? 1);
  /** @param {'store'|'commit'} where  @param {number} count  @param {Set<string>|string} tags */
  return (where, count, tags) => {
    if (where !== point || (point === 'store' ? count !== at : count < at)) return;
    if (tag && !(typeof tags === 'string' ? tags === tag : tags?.has(tag))) return;
    if (--left > 0) return;
    process.kill(process.pid, 'SIGKILL');
  };
}
