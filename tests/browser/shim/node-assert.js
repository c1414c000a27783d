// `node:assert/strict` for the browser runs of Node test files: the
// assertions those files use, with strict (Object.is / deep strict) equality.

export class AssertionError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AssertionError';
  }
}

const show = (v) => {
  try {
    return typeof v === 'bigint' ? `${v}n` : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : ArrayBuffer.isView(x) ? `<${x.constructor.name} ${Array.from(x).join(',')}>` : x));
  } catch {
    return String(v);
  }
};

function fail(message, fallback) {
  throw new AssertionError(message ? `${message instanceof Error ? message.message : message} (${fallback})` : fallback);
}

function deepStrictEqual(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (ArrayBuffer.isView(a)) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
    return true;
  }
  if (a instanceof Map || a instanceof Set) return deepStrictEqual([...a], [...b]);
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) if (!Object.hasOwn(b, k) || !deepStrictEqual(a[k], b[k])) return false;
  return true;
}

function ok(value, message) {
  if (!value) fail(message, `expected a truthy value, got ${show(value)}`);
}

const assert = Object.assign((v, m) => ok(v, m), {
  ok,
  equal(a, b, message) {
    if (!Object.is(a, b)) fail(message, `${show(a)} !== ${show(b)}`);
  },
  strictEqual(a, b, message) {
    if (!Object.is(a, b)) fail(message, `${show(a)} !== ${show(b)}`);
  },
  notEqual(a, b, message) {
    if (Object.is(a, b)) fail(message, `${show(a)} === ${show(b)}`);
  },
  deepEqual(a, b, message) {
    if (!deepStrictEqual(a, b)) fail(message, `${show(a)} is not deep-equal to ${show(b)}`);
  },
  deepStrictEqual(a, b, message) {
    if (!deepStrictEqual(a, b)) fail(message, `${show(a)} is not deep-equal to ${show(b)}`);
  },
  match(s, re, message) {
    if (typeof s !== 'string' || !re.test(s)) fail(message, `${show(s)} does not match ${re}`);
  },
  throws(fn, expected, message) {
    let threw = false;
    let error;
    try {
      fn();
    } catch (e) {
      threw = true;
      error = e;
    }
    if (!threw) fail(message, 'expected the function to throw');
    if (expected instanceof RegExp && !expected.test(String(error?.message ?? error))) fail(message, `${error} does not match ${expected}`);
    if (typeof expected === 'function' && expected.prototype !== undefined && !(error instanceof expected)) fail(message, `${error} is not a ${expected.name}`);
  },
  fail(message) {
    fail(message, 'failed');
  },
});

export const { equal, notEqual, deepEqual, match, throws, strictEqual, deepStrictEqual: deepStrict } = assert;
export { ok };
export default assert;
