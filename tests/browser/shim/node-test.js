// `node:test` for the browser runs of Node test files: test() and before()
// collect, run() runs them in order and returns one result per test.
const tests = [];
const befores = [];

export function test(name, opts, fn) {
  tests.push({ name, fn: typeof opts === 'function' ? opts : fn });
}
export function before(fn) {
  befores.push(fn);
}
export function after() {}
export function describe() {
  throw new Error('node:test shim: describe is not supported');
}

export async function run() {
  for (const b of befores) await b();
  const results = [];
  for (const t of tests) {
    const diagnostics = [];
    const t0 = performance.now();
    try {
      await t.fn({ name: t.name, diagnostic: (m) => diagnostics.push(String(m)) });
      results.push({ name: t.name, ok: true, ms: performance.now() - t0, diagnostics });
    } catch (e) {
      results.push({ name: t.name, ok: false, ms: performance.now() - t0, error: `${e?.message ?? e}`, diagnostics });
    }
  }
  return results;
}

export default test;
