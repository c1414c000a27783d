// Shared by the bench scripts that measure against a loopback relay
// (mesh.mjs, cpu.mjs, offload.mjs, warm-up.mjs): their numeric options, how
// busy the machine is, waiting for it to be idle, percentiles, and which
// build is measured.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The first line of /proc/stat: the CPUs' time by kind (user, nice, system, idle, iowait, ...). */
export const procStat = () => readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);

/** Share of CPU time idle (idle + iowait) over the next `ms`. */
export function cpuIdleFraction(ms) {
  const read = () => {
    const f = procStat();
    return { idle: f[3] + (f[4] ?? 0), total: f.reduce((x, y) => x + y, 0) };
  };
  const a = read();
  return sleep(ms).then(() => {
    const b = read();
    return (b.idle - a.idle) / Math.max(1, b.total - a.total);
  });
}

/** Linux PSI: share of the last 10 s in which some task waited for I/O (%), or null. */
export function ioPressure() {
  try {
    return Number(/some avg10=([\d.]+)/.exec(readFileSync('/proc/pressure/io', 'utf8'))[1]);
  } catch {
    return null;
  }
}

/**
 * Wait (at most `maxS` seconds) for idle CPUs (85 %) and, with `io`, low I/O
 * pressure (under 2 %); a note on the machine's state for the results.
 */
export async function waitIdle(maxS, { io = true } = {}) {
  const t0 = Date.now();
  for (;;) {
    let idle;
    try { idle = await cpuIdleFraction(2000); } catch { return 'unknown (no /proc/stat)'; }
    const p = io ? ioPressure() : null;
    const what = `idle ${(idle * 100).toFixed(0)}%${p == null ? '' : `, I/O pressure ${p.toFixed(1)}%`}`;
    if (idle >= 0.85 && (p == null || p < 2)) return `${what} after ${((Date.now() - t0) / 1000).toFixed(0)} s wait`;
    if (Date.now() - t0 > maxS * 1000) return `still busy (${what}) after ${maxS} s; measured anyway`;
  }
}

/** `--name=N`: a whole number of at least `min`, else `dflt` without the option. Exits on a bad value. */
export function wholeOption(args, name, dflt, script, min = 0) {
  const a = args.find((x) => x.startsWith(`--${name}=`));
  if (!a) return dflt;
  const v = Number(a.slice(name.length + 3));
  if (!Number.isInteger(v) || v < min) {
    console.error(`${script}: ${a} is not a whole number of at least ${min}`);
    process.exit(2);
  }
  return v;
}

/** `--wait-idle[=s]`'s seconds (300 without a value); null without the flag. Exits on a bad value. */
export function waitIdleSeconds(args, script) {
  const flag = args.find((a) => a === '--wait-idle' || a.startsWith('--wait-idle='));
  if (!flag) return null;
  const s = flag.includes('=') ? Number(flag.split('=')[1]) : 300;
  if (!(s > 0)) {
    console.error(`${script}: ${flag} is not a number of seconds`);
    process.exit(2);
  }
  return s;
}

/** The p-th percentile (nearest rank) of an ascending array. */
export const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];

/** Round-trip times in ms: count, p50, p99 (nearest rank), mean, min, max. */
export function summary(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: pct(s, 50),
    p99: pct(s, 99),
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    min: s[0],
    max: s[s.length - 1],
  };
}

/** The commit and core build measured. */
export function buildId() {
  try {
    const head = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'wit', 'js-host'], { encoding: 'utf8' }).trim() ? ' + uncommitted changes in src/wit/js-host' : '';
    const wasm = readFileSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.core.wasm'));
    return `commit ${head}${dirty}; js-host/gen core wasm sha256 ${createHash('sha256').update(wasm).digest('hex').slice(0, 16)}`;
  } catch {
    return '?';
  }
}

/** The median (the mean of the middle two for an even count). */
export const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
