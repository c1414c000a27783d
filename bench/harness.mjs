// Shared timing harness for the bench scripts (sdk.mjs, component.mjs).
//
// A "batch function" takes an iteration count n, does any per-batch setup it
// needs *outside* the timed region, and returns the elapsed nanoseconds of the
// timed region (n operations) as a Number. The harness calibrates n so a batch
// lasts about `batchMs`, warms up for `warmupMs`, then runs `batches` batches
// and reports the median per-operation time in microseconds (plus min/max of
// the batch figures so the spread is visible).

export const now = () => process.hrtime.bigint();
export const since = (t0) => Number(process.hrtime.bigint() - t0);

const envNum = (name, dflt) => {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : dflt;
};

// KARS_BENCH_SCALE < 1 shortens every measurement (for smoke tests).
const SCALE = envNum('KARS_BENCH_SCALE', 1);
export const DEFAULTS = {
  batches: Math.max(3, Math.round(envNum('KARS_BENCH_BATCHES', 7))),
  batchMs: envNum('KARS_BENCH_BATCH_MS', 200) * SCALE,
  warmupMs: envNum('KARS_BENCH_WARMUP_MS', 300) * SCALE,
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * @param {(n:number)=>number} batchFn returns elapsed ns for n operations
 * @param {{batches?:number,batchMs?:number,warmupMs?:number,maxN?:number}} [opts]
 * @returns {{us:number,min_us:number,max_us:number,n:number,batches:number}}
 */
export function measure(batchFn, opts = {}) {
  const { batches, batchMs, warmupMs } = { ...DEFAULTS, ...opts };
  const maxN = opts.maxN ?? 1e7;

  // Calibrate: grow n until a batch takes >= 20 ms (or batchMs if smaller).
  const calMs = Math.min(20, batchMs);
  let n = 1;
  let ns = batchFn(n);
  while (ns < calMs * 1e6 && n < maxN) {
    n = Math.min(maxN, n * (ns < calMs * 1e5 ? 8 : 2));
    ns = batchFn(n);
  }
  const perOpNs = ns / n;

  // Warm up (the calibration already warmed a little).
  const warmN = Math.max(1, Math.min(maxN, Math.round((warmupMs * 1e6) / perOpNs / 2)));
  let warmed = ns;
  while (warmed < warmupMs * 1e6) warmed += batchFn(warmN);

  // Measure.
  const N = Math.max(1, Math.min(maxN, Math.round((batchMs * 1e6) / perOpNs)));
  const perOp = [];
  for (let b = 0; b < batches; b++) perOp.push(batchFn(N) / N / 1e3);
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return {
    us: r3(median(perOp)),
    min_us: r3(Math.min(...perOp)),
    max_us: r3(Math.max(...perOp)),
    n: N,
    batches,
  };
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`bench self-check failed: ${msg}`);
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Print the final result as the last stdout line (run.mjs parses it). */
export function emit(obj) {
  // Own CPU time (user + system), so the runner can tell how much of the
  // machine other work used while this process was measuring.
  const u = process.cpuUsage();
  process.stdout.write(`${JSON.stringify({ ...obj, cpu_us: u.user + u.system })}\n`);
}

/** Progress/diagnostics go to stderr so stdout stays machine-readable. */
export function note(msg) {
  process.stderr.write(`${msg}\n`);
}
