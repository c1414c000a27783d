// Files and jobs for the engine (js-host/ENGINE.md): the `file-read`,
// `file-write`, `file-erase`, `job-start` and `job-kill` commands. Mechanics
// only: the core decides names, sizes, what runs and when.
//
// * Files the core writes live under a private directory (0700 directories,
//   0600 files), at relative paths the core chose; anything that could leave
//   that directory is refused.
// * Job kind "sandbox" (controller): start a sandbox peer process
//   (js-host/sandbox-main.js) with its own state directory; report
//   `job-ready` with its DID once it is registered. Sandboxes run in their own
//   process group and outlive a controller restart, like pods outlive their
//   operator; `killSandboxes(dir)` stops them all (cluster down).
// * Job kind "exec" (sandbox): run the operator's configured command (never
//   one from the network) through /bin/sh in the work directory, with the
//   inputs in `in/`, outputs collected from `out/`.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SANDBOX_MAIN = path.join(HERE, 'sandbox-main.js');
const MAX_OUTPUTS = 11; // the core takes 10 and reports the rest as skipped
const MAX_OUTPUT_BYTES = 30 * 1024 * 1024;
const LOG_TAIL = 16 * 1024;
const SANDBOX_READY_TIMEOUT_MS = 120_000;

/** A relative path the core chose, checked again: no escape from `root`. */
export function safeJoin(root, rel) {
  if (typeof rel !== 'string' || !rel || rel.includes('\0') || path.isAbsolute(rel)) return null;
  const parts = rel.split('/');
  if (parts.some((p) => !p || p === '.' || p === '..' || p.includes('\\'))) return null;
  const full = path.join(root, ...parts);
  return full.startsWith(root + path.sep) ? full : null;
}

function mkdirPrivate(dir) {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
}

function writeDurable(file, bytes) {
  mkdirPrivate(path.dirname(file));
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, bytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  try {
    const d = fs.openSync(path.dirname(file), 'r');
    try { fs.fsyncSync(d); } finally { fs.closeSync(d); }
  } catch { /* directory fsync is best effort on some filesystems */ }
}

function expandHome(p) {
  return p === '~' || p.startsWith('~/') ? path.join(process.env.HOME || '', p.slice(1)) : p;
}

function tail(s, n = LOG_TAIL) {
  return s.length > n ? s.slice(s.length - n) : s;
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Is `pid` still a sandbox process of ours (not a recycled pid)? */
function isSandboxPid(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('sandbox-main.js');
  } catch {
    return alive(pid);
  }
}

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    try { process.kill(pid, signal); } catch { /* gone */ }
  }
}

/** Stop every sandbox process recorded under `dir` (cluster down). */
export async function killSandboxes(dir, { graceMs = 3000 } = {}) {
  let names = [];
  try { names = fs.readdirSync(dir); } catch { return 0; }
  const pids = [];
  for (const n of names) {
    try {
      const { pid } = JSON.parse(fs.readFileSync(path.join(dir, n, 'job.json'), 'utf8'));
      if (Number.isInteger(pid) && alive(pid) && isSandboxPid(pid)) pids.push(pid);
    } catch { /* not a sandbox dir */ }
  }
  for (const pid of pids) killGroup(pid, 'SIGTERM');
  const until = Date.now() + graceMs;
  while (pids.some(alive) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  for (const pid of pids) if (alive(pid)) killGroup(pid, 'SIGKILL');
  return pids.length;
}

/**
 * @param {object} o
 * @param {string} o.filesDir  private directory for core-written files
 * @param {(ev:object)=>void} o.dispatch  feeds events to the core
 * @param {(level:string,msg:string)=>void} o.log
 * @param {{dir:string, exec?:string, relayUrl:string, registryUrl:string, relayToken?:string, progressMs?:number}} [o.sandboxes]  controller: where sandboxes live
 * @param {string} [o.exec]  sandbox: the operator's command for "exec" jobs
 */
export function createJobs({ filesDir, dispatch, log, sandboxes, exec }) {
  const root = path.resolve(filesDir);
  /** job id (bigint) -> { child, kind, dir } */
  const running = new Map();

  function fileRead({ id, path: p, maxBytes }) {
    (async () => {
      const full = path.resolve(expandHome(String(p)));
      const st = await fs.promises.stat(full);
      if (!st.isFile()) throw new Error('not a regular file');
      if (BigInt(st.size) > BigInt(maxBytes)) return { tag: 'file-failed', val: { id, message: `too large: ${st.size}` } };
      const bytes = await fs.promises.readFile(full);
      if (BigInt(bytes.length) > BigInt(maxBytes)) return { tag: 'file-failed', val: { id, message: `too large: ${bytes.length}` } };
      return { tag: 'file-loaded', val: { id, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length) } };
    })().then(
      (ev) => dispatch(ev),
      (e) => dispatch({ tag: 'file-failed', val: { id, message: e?.code === 'ENOENT' ? 'no such file' : e?.code === 'EACCES' ? 'permission denied' : String(e?.message ?? e) } }),
    );
  }

  /** Synchronous and durable, like `store`: the core relies on the order. */
  function fileWrite(rel, bytes) {
    const full = safeJoin(root, rel);
    if (!full) throw new Error(`refusing to write outside the files directory: ${JSON.stringify(rel)}`);
    writeDurable(full, bytes);
  }

  function fileErase(rel) {
    const full = safeJoin(root, rel);
    if (!full) throw new Error(`refusing to erase outside the files directory: ${JSON.stringify(rel)}`);
    fs.rmSync(full, { recursive: true, force: true });
  }

  function exited(id, code, outputs, logText) {
    running.delete(id);
    dispatch({ tag: 'job-exited', val: { id, code, outputs, log: tail(logText) } });
  }

  function startSandbox(id, specJson) {
    if (!sandboxes?.dir) return exited(id, -1, [], 'this controller has no sandbox directory configured');
    let spec;
    try { spec = JSON.parse(specJson); } catch { return exited(id, -1, [], 'bad sandbox spec'); }
    const name = String(spec.name ?? '');
    const dir = safeJoin(path.resolve(sandboxes.dir), name);
    if (!dir || !/^[a-z0-9-]{1,63}$/.test(name)) return exited(id, -1, [], 'bad sandbox name');
    mkdirPrivate(dir);
    // A leftover process of this same job (a controller restart before it
    // was up) goes first; a live sandbox of another job keeps its directory.
    try {
      const old = JSON.parse(fs.readFileSync(path.join(dir, 'job.json'), 'utf8'));
      if (Number.isInteger(old.pid) && alive(old.pid) && isSandboxPid(old.pid)) {
        if (old.job !== String(id)) return exited(id, -1, [], `sandbox name ${name} is in use by another offload`);
        killGroup(old.pid, 'SIGKILL');
      }
    } catch { /* none */ }
    if (sandboxes.exec) spec.executor = 'exec';
    if (sandboxes.progressMs) spec.progress_ms = sandboxes.progressMs;
    writeDurable(path.join(dir, 'spec.json'), Buffer.from(JSON.stringify(spec)));
    const args = [SANDBOX_MAIN, '--state', path.join(dir, 'state'), '--spec', path.join(dir, 'spec.json'),
      '--relay', sandboxes.relayUrl, '--registry', sandboxes.registryUrl];
    if (sandboxes.exec) args.push('--exec', sandboxes.exec);
    // Only what a sandbox needs: the operator's other secrets stay out of it
    // (and out of the command it runs, which could read its parent's env).
    const env = {};
    for (const k of ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'SYSTEMROOT']) if (process.env[k]) env[k] = process.env[k];
    if (sandboxes.relayToken) env.KARS_MESH_RELAY_TOKEN = sandboxes.relayToken;
    const out = fs.openSync(path.join(dir, 'sandbox.log'), 'a', 0o600);
    let child;
    try {
      child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', out], env });
    } catch (e) {
      fs.closeSync(out);
      return exited(id, -1, [], `cannot start the sandbox: ${e.message}`);
    }
    fs.closeSync(out);
    writeDurable(path.join(dir, 'job.json'), Buffer.from(JSON.stringify({ job: String(id), pid: child.pid })));
    const entry = { child, kind: 'sandbox', dir, ready: false };
    running.set(id, entry);
    let buf = '';
    const readyTimer = setTimeout(() => {
      if (!entry.ready) { log('warn', `sandbox ${name} did not come up in ${SANDBOX_READY_TIMEOUT_MS / 1000}s`); killGroup(child.pid, 'SIGKILL'); }
    }, SANDBOX_READY_TIMEOUT_MS);
    readyTimer.unref?.();
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const m = JSON.parse(line);
          if (typeof m.ready === 'string' && !entry.ready) {
            entry.ready = true;
            clearTimeout(readyTimer);
            dispatch({ tag: 'job-ready', val: [id, m.ready] });
          }
        } catch { /* not ours */ }
      }
      if (buf.length > 65536) buf = '';
    });
    child.on('exit', (code, signal) => {
      clearTimeout(readyTimer);
      let logText = '';
      try { logText = tail(fs.readFileSync(path.join(dir, 'sandbox.log'), 'utf8'), 2000); } catch { /* none */ }
      if (running.get(id) === entry) exited(id, signal ? -1 : code ?? -1, [], logText);
    });
    child.unref();
    child.stdout.unref?.();
  }

  function startExec(id, specJson) {
    if (!exec) return exited(id, -1, [], 'no --exec command is configured for this sandbox');
    let spec;
    try { spec = JSON.parse(specJson); } catch { return exited(id, -1, [], 'bad exec spec'); }
    const work = safeJoin(root, String(spec.workdir ?? 'work'));
    if (!work) return exited(id, -1, [], 'bad work directory');
    mkdirPrivate(path.join(work, 'in'));
    const outDir = path.join(work, 'out');
    fs.rmSync(outDir, { recursive: true, force: true });
    mkdirPrivate(outDir);
    const env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: work,
      LANG: process.env.LANG ?? 'C.UTF-8',
      KARS_INPUT_DIR: path.join(work, 'in'),
      KARS_OUTPUT_DIR: outDir,
    };
    for (const [k, v] of Object.entries(spec.env ?? {})) if (/^KARS_[A-Z_]+$/.test(k)) env[k] = String(v);
    let logText = '';
    const child = spawn('/bin/sh', ['-c', exec], { cwd: work, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const entry = { child, kind: 'exec', dir: work };
    running.set(id, entry);
    const add = (d) => { logText = tail(logText + d); };
    child.stdout.setEncoding('utf8').on('data', add);
    child.stderr.setEncoding('utf8').on('data', add);
    const ms = Number(spec.timeout_ms) > 0 ? Math.min(Number(spec.timeout_ms), 2 ** 31 - 1) : 30 * 60_000;
    const t = setTimeout(() => { add(`\n[killed after ${Math.round(ms / 1000)}s]\n`); killGroup(child.pid, 'SIGKILL'); }, ms);
    t.unref?.();
    child.on('error', (e) => add(`\n${e.message}\n`));
    child.on('close', (code, signal) => {
      clearTimeout(t);
      if (running.get(id) !== entry) return;
      const outputs = [];
      try {
        // out/ itself must still be our directory, not a link the command
        // put in its place.
        const st = fs.lstatSync(outDir);
        if (!st.isDirectory()) throw new Error('the output directory was replaced');
        for (const n of fs.readdirSync(outDir).sort()) {
          if (outputs.length >= MAX_OUTPUTS) break;
          let fd;
          try {
            // O_NOFOLLOW: a symlink is refused at open, with no window between check and read.
            fd = fs.openSync(path.join(outDir, n), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
            const fst = fs.fstatSync(fd);
            if (!fst.isFile()) continue;
            if (fst.size > MAX_OUTPUT_BYTES) { add(`\n[output ${n} is larger than 30 MiB; not returned]\n`); continue; }
            const b = Buffer.alloc(fst.size);
            let off = 0;
            while (off < b.length) {
              const r = fs.readSync(fd, b, off, b.length - off, off);
              if (r === 0) break;
              off += r;
            }
            outputs.push([n, new Uint8Array(b.buffer, b.byteOffset, off)]);
          } catch (e) {
            add(`\n[output ${n} not returned: ${e.code ?? e.message}]\n`);
          } finally {
            if (fd !== undefined) fs.closeSync(fd);
          }
        }
      } catch (e) {
        add(`\n[outputs not collected: ${e.message}]\n`);
      }
      exited(id, signal ? -1 : code ?? -1, outputs, logText);
    });
  }

  function jobStart({ id, kind, specJson }) {
    if (kind === 'sandbox') return startSandbox(id, specJson);
    if (kind === 'exec') return startExec(id, specJson);
    exited(id, -1, [], `unknown job kind ${JSON.stringify(kind)}`);
  }

  function jobKill(id) {
    const e = running.get(id);
    if (e) {
      running.delete(id);
      killGroup(e.child.pid, e.kind === 'sandbox' ? 'SIGTERM' : 'SIGKILL');
      if (e.kind === 'sandbox') {
        const pid = e.child.pid;
        setTimeout(() => { if (alive(pid)) killGroup(pid, 'SIGKILL'); }, 3000).unref?.();
      }
      return;
    }
    // Started before a controller restart: find it by its job record.
    if (!sandboxes?.dir) return;
    let names = [];
    try { names = fs.readdirSync(sandboxes.dir); } catch { return; }
    for (const n of names) {
      try {
        const j = JSON.parse(fs.readFileSync(path.join(sandboxes.dir, n, 'job.json'), 'utf8'));
        if (j.job === String(id) && Number.isInteger(j.pid) && alive(j.pid) && isSandboxPid(j.pid)) {
          killGroup(j.pid, 'SIGTERM');
          setTimeout(() => { if (alive(j.pid)) killGroup(j.pid, 'SIGKILL'); }, 3000).unref?.();
        }
      } catch { /* not a sandbox dir */ }
    }
  }

  /** Host stopping: exec jobs die with us; sandboxes are independent peers. */
  function stopAll() {
    for (const [id, e] of running) {
      if (e.kind === 'exec') killGroup(e.child.pid, 'SIGKILL');
      running.delete(id);
    }
  }

  return { fileRead, fileWrite, fileErase, jobStart, jobKill, stopAll };
}
