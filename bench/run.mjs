#!/usr/bin/env node
// Benchmark runner: measures, in one run on this machine,
//   (a) the kars-mesh WebAssembly component in Node  (bench/component.mjs)
//   (b) the same Rust code built natively             (cargo run --release --example bench_native)
//   (c) the reference AGT TypeScript SDK 4.0.0        (bench/sdk.mjs)
// each in its own child process, one after another, then prints a table with
// the ratios and the targets and writes bench/results.json and
// bench/RESULTS.md. Missing a target is reported, not an error: the exit code
// is 0 unless the runner itself breaks.
//
// Usage: node bench/run.mjs [--quick] [--only=sdk,component,native] [--no-write] [--wait-idle[=s]]
//   --quick      shorter measurements (KARS_BENCH_SCALE=0.25) for a smoke run
//   --only=...   run a subset; the others are reported as skipped
//   --no-write   print only; leave results.json / RESULTS.md alone
//   --wait-idle  first wait (up to 300 s, or =s) until other work leaves the CPUs idle

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH, '..');
const args = process.argv.slice(2);
const flag = (f) => args.includes(f);
const onlyArg = args.find((a) => a.startsWith('--only='));
const only = onlyArg ? new Set(onlyArg.slice(7).split(',')) : null;
const quick = flag('--quick');
const noWrite = flag('--no-write');

const OPS = [
  { key: 'establish_us', name: 'X3DH establishment (initiator + responder)', unit: 'µs / establishment', sdkTarget: 8 },
  { key: 'chain1k_us', name: '1 KiB encrypt+decrypt, one chain', unit: 'µs / message', sdkTarget: 5 },
  { key: 'pingpong1k_us', name: '1 KiB ping-pong, DH step per message', unit: 'µs / round trip', sdkTarget: 10 },
  { key: 'chain64k_us', name: '64 KiB encrypt+decrypt, one chain', unit: 'µs / message', sdkTarget: 3 },
];
const NATIVE_TARGET = 3; // component within 3x of native

// ── child processes ──────────────────────────────────────────────────
const childEnv = { ...process.env, ...(quick ? { KARS_BENCH_SCALE: process.env.KARS_BENCH_SCALE ?? '0.25' } : {}) };

/** All-CPU jiffies from /proc/stat: {idle, total}, or null off Linux. */
function procStat() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return { idle: f[3] + (f[4] ?? 0), total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/** Run a command; stream its stderr through; return {code, stdout, stderrTail, error, cpu}. */
function run(cmd, argv, { cwd, timeoutMs, label }) {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let child;
    const st0 = procStat();
    const t0 = process.hrtime.bigint();
    const cpu = () => {
      const st1 = procStat();
      if (!st0 || !st1 || st1.total === st0.total) return null;
      // busy_jiffies / total_jiffies over the child's lifetime, all CPUs.
      return { busy: 1 - (st1.idle - st0.idle) / (st1.total - st0.total), wall_us: Number(process.hrtime.bigint() - t0) / 1e3 };
    };
    try {
      child = spawn(cmd, argv, { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      resolve({ code: -1, stdout, stderrTail: '', error: String(e) });
      return;
    }
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      stderr += `\n[${label}: killed after ${timeoutMs / 1000} s]`;
    }, timeoutMs);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      process.stderr.write(d);
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderrTail: tail(stderr), error: String(e) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, signal, stdout, stderrTail: tail(stderr), cpu: cpu() });
    });
  });
}

// The most telling part of a child's stderr: its first `...Error: ...` line if
// there is one (a Node stack trace), otherwise the last few lines.
const tail = (s, n = 4) => {
  const lines = s.trim().split('\n').filter((l) => l.trim());
  const err = lines.find((l) => /^\s*(\w*Error|error(\[E\d+\])?)[:\s]/.test(l));
  return err ? err.trim() : lines.slice(-n).join('\n');
};

function lastJson(stdout) {
  const lines = stdout.trim().split('\n').reverse();
  for (const l of lines) {
    const t = l.trim();
    if (t.startsWith('{')) {
      try {
        return JSON.parse(t);
      } catch {
        /* keep looking */
      }
    }
  }
  return null;
}

function checkKeys(obj) {
  const missing = OPS.filter((o) => !(typeof obj?.[o.key] === 'number' && obj[o.key] > 0)).map((o) => o.key);
  return missing.length ? `missing or non-positive keys: ${missing.join(', ')}` : null;
}

/**
 * Record how busy the machine was with other work while a measuring child
 * ran: all-CPU busy share minus the child's own CPU time (reported by node
 * children; a child that does not report it is assumed to keep one CPU busy
 * — cargo's own start-up is included then, so this is a rough figure).
 */
function noteOtherLoad(when, cpu, childCpuUs) {
  if (!cpu) return;
  const ncpu = os.cpus().length;
  const own = childCpuUs != null ? childCpuUs / (cpu.wall_us * ncpu) : 1 / ncpu;
  const busy = Math.max(0, Math.round((cpu.busy - own) * 100) / 100);
  busySamples.push({ when, busy });
  if (busy > BUSY_WARN)
    process.stderr.write(`bench: WARNING: other work kept ${Math.round(busy * 100)} % of the CPUs busy ${when}; figures will be noisy\n`);
}

async function measureNode(script, label) {
  const r = await run(process.execPath, [path.join(BENCH, script)], { cwd: BENCH, timeoutMs: 15 * 60e3, label });
  if (r.code !== 0) return { unavailable: `${script} exited ${r.signal ?? r.code}${r.error ? `: ${r.error}` : ''}: ${r.stderrTail || '(no stderr)'}` };
  const j = lastJson(r.stdout);
  if (!j) return { unavailable: `${script} printed no JSON result` };
  noteOtherLoad(`during ${label}`, r.cpu, j.cpu_us);
  const bad = checkKeys(j);
  return bad ? { unavailable: `${script}: ${bad}`, partial: j } : j;
}

async function measureSdk() {
  const installed = () => existsSync(path.join(BENCH, 'node_modules/@microsoft/agent-governance-sdk/package.json'));
  if (!installed()) {
    // Install the pinned SDK from bench/package-lock.json.
    process.stderr.write('sdk: installing bench dependencies (npm ci)\n');
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const env = { ...process.env, npm_config_cache: process.env.npm_config_cache ?? path.join(ROOT, '.cache/npm') };
    const r = spawnSync(npm, ['ci', '--no-audit', '--no-fund'], { cwd: BENCH, env, stdio: ['ignore', 2, 2], timeout: 10 * 60e3 });
    if (r.status !== 0 || !installed()) return { unavailable: `SDK not installed and \`npm ci\` in bench/ failed (${r.error ?? r.status})` };
  }
  return measureNode('sdk.mjs', 'sdk');
}

async function measureComponent() {
  if (!existsSync(path.join(ROOT, 'js-host/core.js')) && !process.env.KARS_BENCH_CORE)
    return { unavailable: 'js-host/core.js not found (build the component first)' };
  return measureNode('component.mjs', 'component');
}

function cargoTargetArgs() {
  // If the project's cargo config makes wasm32 the default build target, ask
  // for the host explicitly so the example runs natively.
  for (const f of ['.cargo/config.toml', '.cargo/config']) {
    const p = path.join(ROOT, f);
    if (existsSync(p) && /^\s*target\s*=/m.test(readFileSync(p, 'utf8'))) {
      const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '')?.[1];
      if (host) return ['--target', host];
    }
  }
  return [];
}

async function measureNative(beforeRun = async () => {}) {
  const ex = ['examples/bench_native.rs', 'examples/bench_native/main.rs'].find((p) => existsSync(path.join(ROOT, p)));
  if (!ex) return { unavailable: 'examples/bench_native.rs not found' };
  const cargo = process.env.CARGO ?? 'cargo';
  const base = ['--release', '--example', 'bench_native', ...cargoTargetArgs()];
  // Build first (not measured, nothing else runs meanwhile), then run.
  process.stderr.write('native: cargo build --release --example bench_native\n');
  const b = await run(cargo, ['build', ...base], { cwd: ROOT, timeoutMs: 30 * 60e3, label: 'cargo build' });
  if (b.code !== 0) return { unavailable: `cargo build failed (${b.signal ?? b.code}${b.error ? `: ${b.error}` : ''}): ${b.stderrTail}` };
  await beforeRun();
  const r = await run(cargo, ['run', '-q', ...base], { cwd: ROOT, timeoutMs: 15 * 60e3, label: 'bench_native' });
  if (r.code !== 0) return { unavailable: `bench_native exited ${r.signal ?? r.code}: ${r.stderrTail || '(no stderr)'}` };
  const j = lastJson(r.stdout);
  if (!j) return { unavailable: 'bench_native printed no JSON line' };
  noteOtherLoad('during native', r.cpu, typeof j.cpu_us === 'number' ? j.cpu_us : null);
  // Accept the example's shorter names for the extras.
  for (const [alias, key] of [['frame1k_us', 'frame_chain1k_us'], ['frame64k_us', 'frame_chain64k_us']])
    if (j[key] == null && typeof j[alias] === 'number') j[key] = j[alias];
  const bad = checkKeys(j);
  return bad ? { unavailable: `bench_native: ${bad}`, partial: j } : j;
}

// ── machine info ─────────────────────────────────────────────────────
function sh(cmd, argv, cwd = ROOT) {
  try {
    const r = spawnSync(cmd, argv, { cwd, encoding: 'utf8', timeout: 20e3 });
    return r.status === 0 ? r.stdout.trim() : null;
  } catch {
    return null;
  }
}
function readJson(p) {
  try {
    return JSON.parse(readFileSync(p, 'utf8'));
  } catch {
    return null;
  }
}
function machineInfo() {
  let cpu = null;
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? null;
  } catch {
    /* not Linux */
  }
  let osName = `${os.type()} ${os.release()}`;
  try {
    const pretty = /^PRETTY_NAME="?([^"\n]+)"?/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
    if (pretty) osName = `${pretty} (${os.type()} ${os.release()})`;
  } catch {
    /* ignore */
  }
  return {
    node: process.version,
    cpu_model: cpu ?? os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
    arch: process.arch,
    memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: osName,
    rustc: sh('rustc', ['--version']),
    cargo: sh(process.env.CARGO ?? 'cargo', ['--version']),
    jco: readJson(path.join(ROOT, 'node_modules/@bytecodealliance/jco/package.json'))?.version ?? null,
    sdk: readJson(path.join(BENCH, 'node_modules/@microsoft/agent-governance-sdk/package.json'))?.version ?? null,
    git_commit: sh('git', ['rev-parse', '--short', 'HEAD']),
    loadavg_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** Share of all CPUs busy over `ms` (from /proc/stat), while we run nothing. */
async function cpuBusy(ms = 1000) {
  const a = procStat();
  await new Promise((r) => setTimeout(r, ms));
  const b = procStat();
  if (!a || !b || b.total === a.total) return null;
  return Math.round((1 - (b.idle - a.idle) / (b.total - a.total)) * 100) / 100;
}
const BUSY_WARN = 0.15;
const busySamples = [];
async function sampleBusy(when) {
  const busy = await cpuBusy();
  if (busy != null) {
    busySamples.push({ when, busy });
    if (busy > BUSY_WARN)
      process.stderr.write(`bench: WARNING: ${Math.round(busy * 100)} % of the CPUs busy with other work ${when}; figures will be noisy\n`);
  }
}

// ── main ─────────────────────────────────────────────────────────────
// --wait-idle[=seconds]: before starting, wait (default up to 300 s) until
// other work uses less than BUSY_WARN of the CPUs.
const waitArg = args.find((a) => a === '--wait-idle' || a.startsWith('--wait-idle='));
if (waitArg) {
  const limit = Number(waitArg.split('=')[1] ?? 300) * 1000;
  const t0 = Date.now();
  for (;;) {
    const busy = await cpuBusy(2000);
    if (busy == null || busy <= BUSY_WARN) break;
    if (Date.now() - t0 > limit) {
      process.stderr.write(`bench: machine still ${Math.round(busy * 100)} % busy after ${limit / 1000} s; going ahead\n`);
      break;
    }
    process.stderr.write(`bench: waiting for an idle machine (${Math.round(busy * 100)} % busy)\n`);
  }
}
const started = new Date();
const machine = machineInfo();
process.stderr.write(`bench: ${machine.cpu_model}, ${machine.cpus} CPUs, node ${machine.node}${quick ? ' (quick mode)' : ''}\n`);

const impls = {};
const want = (k) => !only || only.has(k);
// Native first: its cargo build is the slow, CPU-heavy part and must be over
// before anything is timed.
// Between runs, the machine's other load is sampled for a second (nothing of
// ours running) so a noisy run is flagged.
if (want('native')) {
  impls.native = await measureNative(async () => sampleBusy('before native'));
} else impls.native = { unavailable: 'skipped (--only)' };
if (want('sdk')) {
  await sampleBusy('before sdk');
  impls.sdk = await measureSdk();
} else impls.sdk = { unavailable: 'skipped (--only)' };
if (want('component')) {
  await sampleBusy('before component');
  impls.component = await measureComponent();
} else impls.component = { unavailable: 'skipped (--only)' };
await sampleBusy('after');
machine.loadavg_end = os.loadavg().map((x) => Math.round(x * 100) / 100);
machine.other_cpu_busy = busySamples;
const maxBusy = busySamples.length ? Math.max(...busySamples.map((b) => b.busy)) : null;
const noisy = maxBusy != null && maxBusy > BUSY_WARN;

const ok = (k) => !impls[k].unavailable;
const r2 = (x) => Math.round(x * 100) / 100;
const rows = OPS.map((op) => {
  const sdk = ok('sdk') ? impls.sdk[op.key] : null;
  const comp = ok('component') ? impls.component[op.key] : null;
  const nat = ok('native') ? impls.native[op.key] : null;
  const sdkRatio = sdk != null && comp != null ? r2(sdk / comp) : null;
  const natRatio = comp != null && nat != null ? r2(comp / nat) : null;
  return {
    op: op.key.replace(/_us$/, ''),
    name: op.name,
    unit: op.unit,
    sdk_us: sdk,
    component_us: comp,
    native_us: nat,
    sdk_over_component: sdkRatio,
    sdk_target: op.sdkTarget,
    sdk_pass: sdkRatio == null ? null : sdkRatio >= op.sdkTarget,
    component_over_native: natRatio,
    native_target: NATIVE_TARGET,
    native_pass: natRatio == null ? null : natRatio <= NATIVE_TARGET,
  };
});
const checks = rows.flatMap((r) => [
  { check: `${r.op}: SDK/component >= ${r.sdk_target}x`, value: r.sdk_over_component, pass: r.sdk_pass },
  { check: `${r.op}: component/native <= ${r.native_target}x`, value: r.component_over_native, pass: r.native_pass },
]);
const passed = checks.filter((c) => c.pass === true).length;
const failed = checks.filter((c) => c.pass === false).length;
const notRun = checks.filter((c) => c.pass === null).length;

// ── print ────────────────────────────────────────────────────────────
const fmt = (x) => (x == null ? '—' : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const fmtSmall = (x) => (x == null ? '—' : x < 1 ? x.toFixed(3) : fmt(x));
const fx = (x) => (x == null ? '—' : `${x.toFixed(2)}x`);
const verdict = (p) => (p == null ? 'n/a' : p ? 'PASS' : 'FAIL');
const pad = (s, n) => String(s).padEnd(n);
const padl = (s, n) => String(s).padStart(n);

const out = [];
out.push('');
out.push(`kars-mesh benchmark — ${started.toISOString()}${quick ? ' (QUICK MODE: short runs)' : ''}`);
out.push(`${machine.cpu_model}, ${machine.cpus} CPUs, node ${machine.node}, ${machine.rustc ?? 'rustc ?'}`);
if (noisy)
  out.push(`WARNING: other work kept up to ${Math.round(maxBusy * 100)} % of the CPUs busy during this run; figures are noisy, re-run on an idle machine`);
for (const k of ['component', 'native', 'sdk'])
  if (!ok(k)) out.push(`${k}: unavailable (${impls[k].unavailable.replace(/\n/g, ' | ')})`);
out.push('');
out.push(
  `${pad('operation (µs)', 16)}${padl('SDK', 10)}${padl('component', 11)}${padl('native', 9)}  ${pad('SDK/comp', 9)}${pad('target', 8)}${pad('', 6)}${pad('comp/nat', 9)}${pad('target', 8)}`,
);
for (const r of rows)
  out.push(
    `${pad(r.op, 16)}${padl(fmt(r.sdk_us), 10)}${padl(fmt(r.component_us), 11)}${padl(fmt(r.native_us), 9)}  ${pad(fx(r.sdk_over_component), 9)}${pad(`>=${r.sdk_target}x`, 8)}${pad(verdict(r.sdk_pass), 6)}${pad(fx(r.component_over_native), 9)}${pad(`<=${r.native_target}x`, 8)}${verdict(r.native_pass)}`,
  );
if (ok('component') && impls.component.breakdown) {
  out.push('');
  out.push('component, raw calls vs frame-level calls (JSON + base64 inside the component):');
  for (const [k, b] of Object.entries(impls.component.breakdown))
    out.push(`  ${pad(k, 12)} raw ${padl(fmt(b.raw_us), 8)}  frame ${padl(fmt(b.frame_us), 8)}  framing ${padl(fmt(b.framing_us), 7)} µs (${(b.framing_fraction * 100).toFixed(1)} % of frame path)`);
}
if (ok('component') && impls.component.aead64k_simd_us)
  out.push('', `64 KiB AEAD alone: simd128 ChaCha20 ${fmt(impls.component.aead64k_simd_us)} µs, chacha20 crate ${fmt(impls.component.aead64k_crate_us)} µs (crate / simd128 ${fx(impls.component.aead64k_crate_us / impls.component.aead64k_simd_us)})${ok('native') && impls.native.aead64k_us ? `, native ${fmt(impls.native.aead64k_us)} µs` : ''}`);
out.push('');
for (const c of checks) if (c.pass === false) out.push(`MISSED TARGET: ${c.check} (got ${fx(c.value)})`);
out.push(`targets: ${passed} passed, ${failed} missed${notRun ? `, ${notRun} not measured` : ''}`);
process.stdout.write(`${out.join('\n')}\n`);

// ── write ────────────────────────────────────────────────────────────
const results = {
  date: started.toISOString(),
  quick,
  machine,
  targets: {
    sdk_over_component_min: Object.fromEntries(OPS.map((o) => [o.key.replace(/_us$/, ''), o.sdkTarget])),
    component_over_native_max: NATIVE_TARGET,
  },
  rows,
  checks,
  summary: { passed, missed: failed, not_measured: notRun, noisy, other_cpu_busy_max: maxBusy },
  sdk: impls.sdk,
  component: impls.component,
  native: impls.native,
};

function markdown() {
  const L = [];
  const m = machine;
  L.push('# kars-mesh benchmark results');
  L.push('');
  L.push('Generated by `node bench/run.mjs` (do not edit by hand; re-run to refresh).');
  if (quick) L.push('\n**Quick mode**: short measurement runs, numbers are rough.');
  L.push('');
  L.push('| | |');
  L.push('| --- | --- |');
  L.push(`| date | ${started.toISOString()} |`);
  L.push(`| CPU | ${m.cpu_model} (${m.cpus} CPUs, ${m.arch}) |`);
  L.push(`| memory | ${m.memory_gib} GiB |`);
  L.push(`| OS | ${m.os} |`);
  L.push(`| node | ${m.node} |`);
  L.push(`| rustc / cargo | ${m.rustc ?? '—'} / ${m.cargo ?? '—'} |`);
  L.push(`| jco | ${m.jco ?? '—'} |`);
  L.push(`| AGT SDK | @microsoft/agent-governance-sdk ${m.sdk ?? '—'} |`);
  L.push(`| git commit | ${m.git_commit ?? '—'} |`);
  L.push(`| load average (start → end) | ${m.loadavg_start.join(' ')} → ${m.loadavg_end.join(' ')} |`);
  L.push(`| other CPU use (between and during runs) | ${busySamples.map((b) => `${Math.round(b.busy * 100)} % ${b.when}`).join(', ') || '—'} |`);
  L.push('');
  if (noisy) L.push(`**Warning: other work kept up to ${Math.round(maxBusy * 100)} % of the CPUs busy during this run; figures are noisy.**\n`);
  for (const k of ['component', 'native', 'sdk'])
    if (!ok(k)) L.push(`- **${k}: unavailable** (${impls[k].unavailable.replace(/\n/g, ' ').replace(/\|/g, '\\|')})`);
  L.push('');
  L.push('## Results (µs, median of batches; lower is better)');
  L.push('');
  L.push('| operation | unit | AGT SDK 4.0.0 | component (Node) | native | SDK / component | target | | component / native | target | |');
  L.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |');
  for (const r of rows)
    L.push(
      `| ${r.name} | ${r.unit} | ${fmt(r.sdk_us)} | ${fmt(r.component_us)} | ${fmt(r.native_us)} | ${fx(r.sdk_over_component)} | ≥ ${r.sdk_target}x | ${verdict(r.sdk_pass)} | ${fx(r.component_over_native)} | ≤ ${r.native_target}x | ${verdict(r.native_pass)} |`,
    );
  L.push('');
  L.push(`Targets: **${passed} passed, ${failed} missed**${notRun ? `, ${notRun} not measured` : ''}.`);
  const missed = checks.filter((c) => c.pass === false);
  if (missed.length) {
    L.push('');
    for (const c of missed) L.push(`- MISSED: ${c.check} (got ${fx(c.value)})`);
  }

  const c = ok('component') ? impls.component : null;
  const s = ok('sdk') ? impls.sdk : null;
  const n = ok('native') ? impls.native : null;
  L.push('');
  L.push('## Extras');
  L.push('');
  L.push('| measurement | AGT SDK | component | native |');
  L.push('| --- | ---: | ---: | ---: |');
  L.push(`| X3DH establishment, 3-DH (no one-time prekey) | ${fmt(s?.establish_3dh_us)} | ${fmt(c?.establish_3dh_us)} | ${fmt(n?.establish_3dh_us)} |`);
  L.push(`| 1 KiB one chain, frame level | ${fmt(s?.frame_chain1k_us)} | ${fmt(c?.frame_chain1k_us)} | ${fmt(n?.frame_chain1k_us)} |`);
  L.push(`| 64 KiB one chain, frame level | ${fmt(s?.frame_chain64k_us)} | ${fmt(c?.frame_chain64k_us)} | ${fmt(n?.frame_chain64k_us)} |`);
  L.push(`| 1 KiB ping-pong, frame level | — | ${fmt(c?.frame_pingpong1k_us)} | ${fmt(n?.frame_pingpong1k_us)} |`);
  L.push(`| per-call floor of the glue (session-drop of an unknown handle) | — | ${fmtSmall(c?.call_floor_us)} | — |`);
  L.push(`| identity-describe (record, 2 strings, 2 × 32-byte lists out) | — | ${fmtSmall(c?.describe_us)} | — |`);
  L.push(`| component load (compile + instantiate), ms | — | ${fmt(c?.load_ms)} | — |`);
  if (c?.aead64k_simd_us) {
    L.push('');
    L.push('### The message AEAD\'s ChaCha20: hand-written simd128 vs the `chacha20` crate');
    L.push('');
    L.push('64 KiB ChaCha20-Poly1305 seal + open alone (no ratchet), µs per message, through the toolkit\'s `aead-seal` / `aead-open` (same key, nonce, 147-byte AD and boundary copies for both; the two must produce the same bytes). The component ships the simd128 ChaCha20 (`src/crypto/aead.rs`); the `chacha20` crate (through `chacha20poly1305`) has no wasm SIMD backend. Poly1305 is the `poly1305` crate\'s in both. Native is the crate (its runtime-selected backend: AVX2 where the CPU has it).');
    L.push('');
    L.push('| component, simd128 ChaCha20 | component, `chacha20` crate | crate / simd128 | native (crate) | component simd128 / native |');
    L.push('| ---: | ---: | ---: | ---: | ---: |');
    L.push(`| ${fmt(c.aead64k_simd_us)} | ${fmt(c.aead64k_crate_us)} | ${fx(c.aead64k_crate_us / c.aead64k_simd_us)} | ${fmt(n?.aead64k_us)} | ${n?.aead64k_us ? fx(c.aead64k_simd_us / n.aead64k_us) : '—'} |`);
  }
  if (c?.breakdown) {
    L.push('');
    L.push('### Where the component\'s time goes');
    L.push('');
    L.push('Raw path = `session-encrypt` / `session-decrypt` (header and ciphertext bytes across the boundary). Frame path = `session-encrypt-frame` / `session-decrypt-frame` (the complete relay `message` frame as JSON text, base64 inside, built and parsed in the component). Framing = frame − raw.');
    L.push('');
    L.push('| operation | raw µs | frame µs | framing µs | framing share of frame path | native µs | component raw / native |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const [k, b] of Object.entries(c.breakdown)) {
      const nat = n?.[`${k}_us`];
      L.push(`| ${k} | ${fmt(b.raw_us)} | ${fmt(b.frame_us)} | ${fmt(b.framing_us)} | ${(b.framing_fraction * 100).toFixed(1)} % | ${fmt(nat)} | ${nat ? fx(b.raw_us / nat) : '—'} |`);
    }
  }
  L.push('');
  L.push('## What is counted');
  L.push('');
  L.push(...METHOD);
  return `${L.join('\n')}\n`;
}

const METHOD = `Each implementation runs in its own child process, one after another
(native first, after its \`cargo build\`, so no build overlaps a measurement).
Each figure is the median of 7 batches of about 200 ms each, after a warm-up
of about 300 ms and a calibration; \`results.json\` also has the min and max
batch figures and the batch size. Both directions use the channel AD of the
wire spec (\`"<initiatorDID>|<responderDID>"\` ‖ X3DH AD, 147 bytes) and
real \`did:mesh:\` DIDs. Every batch checks its last decrypted plaintext.

- **AGT SDK** (\`bench/sdk.mjs\`): the SDK's own classes, unchanged —
  \`X3DHKeyManager\` holds the keys, \`SecureChannel.createSender\` /
  \`createReceiver\` / \`send\` / \`receive\` (what the SDK's
  \`MeshClient.establishSession\` / \`acceptSession\` / \`send\` / frame
  handler call). Pure JS on @noble/curves, @noble/hashes, @noble/ciphers.
- **component** (\`bench/component.mjs\`): the project's loader
  (\`js-host/core.js\`) and the \`toolkit\` interface of \`wit/world.wit\`,
  through the jco-transpiled glue. Headline figures use the raw calls
  \`session-encrypt\` / \`session-decrypt\`.
- **native**: \`cargo run --release --example bench_native\` (release
  profile: LTO, 1 codegen unit, opt-level 3, default target CPU): the same
  \`Toolkit\` the component exports, called directly, no wasm boundary. Its
  timing loop is the example's own (median of 7 batches of fixed size after a
  short warm-up), with the same operations as below; it takes randomness from
  the crate's seeded SHA-256 counter generator instead of the OS, and its
  last decrypted plaintext is not compared. The runner reads the last JSON
  line it prints.

Per operation:

1. **X3DH establishment**, per establishment, 4-DH with a fresh one-time
   prekey each time (the SDK's path when the registry still has OPKs).
   - SDK: \`createSender\` = \`initiate\` (Ed25519 verify of the signed-prekey
     signature, ephemeral X25519 keygen, DH1..DH4, HKDF) + \`DoubleRatchet.initSender\`
     (X25519 keygen + DH + HKDF); \`createReceiver\` = \`respond\` (DH1..DH4,
     HKDF, OPK deleted) + \`initReceiver\`. Not timed: OPK generation and
     \`getPublicBundle\` (done per batch beforehand).
   - component: \`session-initiate\` (bundle JSON parse + base64url decode, the
     same signature verify, ephemeral keygen, DH1..DH4, HKDF, sender ratchet
     init, establishment JSON out) + \`session-respond\` (establishment JSON
     parse, DH1..DH4, HKDF, OPK consumed). Not timed: \`prekeys-generate\`
     (one call per ≤100 establishments; it makes the signed prekey and the
     OPKs), building the registry GET-answer JSON per OPK, \`session-drop\`.
     The component also does the JSON/base64 work that the SDK leaves to
     \`MeshClient\` / \`RegistryClient\` (a few µs; the SDK side is not charged
     for it). The core also checks two things the SDK does not: that the
     bundle's Ed25519 key hashes to the peer's DID (one SHA-256) and that its
     X25519 identity key is the Montgomery form of that Ed25519 key (one point
     decompression). That is extra work charged to the component only.
   - The extra row "3-DH" uses a bundle with no one-time prekey (one DH less
     on each side).
2. **1 KiB, one chain**: A (initiator) encrypts, B decrypts, repeatedly; B's
   first receive (its one DH step) happens before timing, so every timed
   message is one HMAC chain step + ChaCha20-Poly1305 on each side, no DH.
   µs per message (encrypt + decrypt).
3. **1 KiB ping-pong**: A→B then B→A, each decrypted by the other side; every
   receive is a DH ratchet step (2 X25519 DH + 1 keygen + 2 HKDF), checked by
   the header's \`pn\` / \`previousChainLength\` = 1. µs per round trip (2
   encrypts, 2 decrypts, 2 DH steps).
4. **64 KiB, one chain**: as 2 with 64 KiB plaintexts.

Frame level (extras): the component's \`session-encrypt-frame\` /
\`session-decrypt-frame\` produce and consume the complete relay \`message\`
frame text. The SDK row builds the same frame object its \`MeshClient.send\`
builds (\`randomUUID\`, ISO timestamp, base64 via
\`MeshClient.prototype.uint8ToBase64\`) with \`JSON.stringify\`, and parses it
as its frame handler does (\`JSON.parse\`, \`base64ToUint8\`), without the
WebSocket.

Fairness notes: both draw randomness from Web Crypto
\`getRandomValues\` (the SDK directly, the component through its
\`random-bytes\` host import and the loader's default), inside the timed
region. The component pays the JS↔wasm copy of every argument and result
(see the per-call floor and identity-describe rows). The SDK mutates its
ratchet state in place; spec §9 requires the core to work on a candidate copy
and commit it only after the tag verifies, and that copy is counted. The
SDK 4.0.0 uses the legacy X3DH KDF (0xFF×32 as HKDF salt); the core uses the
spec's (0xFF×32 prefixed to the IKM): one HKDF either way, no timing effect.`.split('\n');

if (!noWrite) {
  writeFileSync(path.join(BENCH, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(path.join(BENCH, 'RESULTS.md'), markdown());
  process.stdout.write(`wrote ${path.relative(process.cwd(), path.join(BENCH, 'results.json'))} and ${path.relative(process.cwd(), path.join(BENCH, 'RESULTS.md'))}\n`);
}
