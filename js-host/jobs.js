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
//   inputs in `in/`, outputs collected from `out/`. The command runs in its
//   own mount, pid and user namespace (unshare + setpriv, util-linux) where
//   the controller's state, the sandboxes directory (this sandbox's own
//   state.key included) and the user's well-known secret directories are
//   hidden under empty tmpfs mounts and only its work directory is mounted
//   back; without namespaces it is NOT run unless the operator opted out
//   (--exec-unisolated). The work directory is erased when the job ends.
//   Lines `KARS_PROGRESS <pct> <text>` the command prints on its stdout are
//   its progress reports: passed to the core as `job-progress` (the newest
//   at most every PROGRESS_EVERY_MS) and left out of the output's tail.
// * Sandbox directories are used once: a job whose directory exists is
//   refused (unless it is the same job started again after a controller
//   restart, which gets a fresh directory), and the whole directory (state,
//   state.key, inputs, outputs) is erased when the sandbox ends, is killed,
//   or is found dead when a controller starts.
// * Nothing in the files area follows a symbolic link: every directory on
//   the way is opened with O_NOFOLLOW (through /proc/self/fd on Linux, so a
//   link swapped in meanwhile is not followed either), temp files are
//   created with O_CREAT|O_EXCL|O_NOFOLLOW.
// * file-read refuses paths that resolve into this node's state directory
//   (its keys) or well-known secret locations (~/.ssh, /proc, ...).

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeDirs } from './storage-fs.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SANDBOX_MAIN = path.join(HERE, 'sandbox-main.js');
// Defaults for a spec without the core's limits (the core sends its own:
// `max_outputs`, `max_output_bytes`); a file left out is named in `refused`.
const MAX_OUTPUTS = 10;
const MAX_OUTPUT_BYTES = 31_454_208;
// Most files named in `refused` (a command may leave thousands).
const MAX_REFUSED = 50;
const LOG_TAIL = 16 * 1024;
// An --exec command's progress lines (`KARS_PROGRESS <pct> <text>`), and how
// often at most one goes to the core (the newest wins).
const PROGRESS_PREFIX = 'KARS_PROGRESS';
const PROGRESS_EVERY_MS = 200;
// A line longer than this is output, never a progress report.
const PROGRESS_LINE_MAX = 4096;
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
  makeDirs(dir, 0o700);
}

// ---- files without following symbolic links --------------------------------

const C = fs.constants;
/** /proc/self/fd/N/name resolves `name` inside the directory open as N (an openat). */
const PROC_FD = (() => { try { return fs.statSync('/proc/self/fd').isDirectory() ? '/proc/self/fd' : null; } catch { return null; } })();
const O_DIR_NOFOLLOW = C.O_RDONLY | (C.O_DIRECTORY ?? 0) | (C.O_NOFOLLOW ?? 0);

class LinkRefused extends Error {}

/** `name` inside the directory `d` ({fd} on Linux, else {path}). */
const at = (d, name) => (d.fd !== undefined ? `${PROC_FD}/${d.fd}/${name}` : path.join(d.path, name));

/**
 * Split an exec command's stdout into its progress reports and the rest.
 * `take(chunk)` returns the text that is output (complete lines, and a
 * partial line that cannot be a report); `end()` what is left at exit.
 * `report(rest)` gets what follows `KARS_PROGRESS ` on a report line.
 */
export function progressLines(report) {
  let partial = '';
  const isReport = (line) => line === PROGRESS_PREFIX || line.startsWith(`${PROGRESS_PREFIX} `) || line.startsWith(`${PROGRESS_PREFIX}\t`);
  // Could `s` still become a report line once more text comes?
  const mayBeReport = (s) => s.length <= PROGRESS_LINE_MAX && (PROGRESS_PREFIX.startsWith(s) || isReport(s));
  const line = (l) => {
    const text = l.endsWith('\r') ? l.slice(0, -1) : l;
    if (isReport(text) && text.length <= PROGRESS_LINE_MAX) {
      report(text.slice(PROGRESS_PREFIX.length + 1));
      return '';
    }
    return `${l}\n`;
  };
  return {
    take(chunk) {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      let out = lines.map(line).join('');
      if (!mayBeReport(partial)) {
        out += partial;
        partial = '';
      }
      return out;
    },
    end() {
      const rest = partial;
      partial = '';
      if (!rest) return '';
      return line(rest).replace(/\n$/, '');
    },
  };
}

/**
 * At most one call of `send(value)` every `everyMs`: a value that comes
 * sooner waits, and a newer one replaces it. `flush()` sends a waiting one.
 */
function throttled(send, everyMs) {
  let last = 0;
  let waiting = null;
  let timer = null;
  const fire = () => {
    timer = null;
    if (waiting === null) return;
    const v = waiting;
    waiting = null;
    last = Date.now();
    send(v);
  };
  return {
    push(v) {
      waiting = v;
      const wait = last + everyMs - Date.now();
      if (wait <= 0) fire();
      else if (!timer) {
        timer = setTimeout(fire, wait);
        timer.unref?.();
      }
    },
    flush() {
      if (timer) clearTimeout(timer);
      fire();
    },
  };
}

/** The core's output limits from an exec spec (defaults when absent). */
function outputLimits(spec) {
  const n = (v, dflt) => (Number.isSafeInteger(v) && v >= 0 ? v : dflt);
  return { maxOutputs: n(spec.max_outputs, MAX_OUTPUTS), maxBytes: n(spec.max_output_bytes, MAX_OUTPUT_BYTES) };
}

/**
 * Regular files in the open output directory `d`, in name order, up to the
 * limits; every file left out is named in `refused` with why (at most
 * MAX_REFUSED of them, then one entry counting the rest).
 */
function collectOutputs(d, { maxOutputs, maxBytes }) {
  const outputs = [];
  const refused = [];
  let unlisted = 0;
  const refuse = (n, why) => { if (refused.length < MAX_REFUSED) refused.push([n, why]); else unlisted++; };
  const names = fs.readdirSync(d.fd !== undefined ? `${PROC_FD}/${d.fd}` : d.path).sort();
  for (const n of names) {
    if (outputs.length >= maxOutputs) { refuse(n, `more than ${maxOutputs} output files`); continue; }
    let fd;
    try {
      // O_NOFOLLOW: a symlink is refused at open, with no window between check and read.
      fd = fs.openSync(at(d, n), C.O_RDONLY | C.O_NOFOLLOW | (C.O_NONBLOCK ?? 0));
      const fst = fs.fstatSync(fd);
      if (!fst.isFile()) { refuse(n, 'not a regular file'); continue; }
      if (fst.size > maxBytes) {
        refuse(n, `${fst.size} bytes; a file can be at most ${maxBytes} bytes, what fits in 80 chunks of 512 KiB once base64-encoded`);
        continue;
      }
      const b = Buffer.alloc(fst.size);
      let off = 0;
      while (off < b.length) {
        const r = fs.readSync(fd, b, off, b.length - off, off);
        if (r === 0) break;
        off += r;
      }
      outputs.push([n, new Uint8Array(b.buffer, b.byteOffset, off)]);
    } catch (e) {
      refuse(n, e.code === 'ELOOP' ? 'a symbolic link (not followed)' : `cannot be read (${e.code ?? e.message})`);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
  if (unlisted > 0) refused.push([`${unlisted} more`, 'also not returned (not listed one by one)']);
  return { outputs, refused };
}

function closeDir(d) {
  if (d?.fd !== undefined) fs.closeSync(d.fd);
}

/**
 * Open `root` (trusted), then each of `parts` below it as a directory that is
 * not a symbolic link, creating missing ones 0700 when `create`. Returns the
 * last one ({fd} or, without /proc, {path}); close it with closeDir.
 */
function openDirChain(root, parts, { create }) {
  if (create) mkdirPrivate(root);
  if (!PROC_FD) {
    let cur = root;
    for (const p of parts) {
      cur = path.join(cur, p);
      if (create) { try { fs.mkdirSync(cur, { mode: 0o700 }); } catch (e) { if (e.code !== 'EEXIST') throw e; } }
      const st = fs.lstatSync(cur);
      if (st.isSymbolicLink() || !st.isDirectory()) throw new LinkRefused(`${path.relative(root, cur)} is not a plain directory (a symbolic link?); refusing to follow it`);
    }
    return { path: cur };
  }
  let d = { fd: fs.openSync(root, C.O_RDONLY | (C.O_DIRECTORY ?? 0)) };
  try {
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (create) { try { fs.mkdirSync(at(d, p), { mode: 0o700 }); } catch (e) { if (e.code !== 'EEXIST') throw e; } }
      let fd;
      try {
        fd = fs.openSync(at(d, p), O_DIR_NOFOLLOW);
      } catch (e) {
        if (e.code === 'ELOOP' || e.code === 'ENOTDIR') {
          throw new LinkRefused(`${parts.slice(0, i + 1).join('/')} is not a plain directory (a symbolic link?); refusing to follow it`);
        }
        throw e;
      }
      closeDir(d);
      d = { fd };
    }
    return d;
  } catch (e) {
    closeDir(d);
    throw e;
  }
}

function fsyncDirHandle(d) {
  try {
    if (d.fd !== undefined) return fs.fsyncSync(d.fd);
    const fd = fs.openSync(d.path, 'r');
    try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
  } catch { /* directory fsync is best effort on some filesystems */ }
}

/**
 * Durable write of `root/parts...` without following a symbolic link anywhere
 * below `root`: temp file `<name>.tmp-<pid>` created with
 * O_CREAT|O_EXCL|O_NOFOLLOW (an existing one, a planted link say, is refused),
 * fsync, rename over the target (a link there is replaced, not followed),
 * fsync the directory.
 */
function writeDurableAt(root, parts, bytes) {
  const name = parts.at(-1);
  const d = openDirChain(root, parts.slice(0, -1), { create: true });
  try {
    const tmpName = `${name}.tmp-${process.pid}`;
    let fd;
    try {
      fd = fs.openSync(at(d, tmpName), C.O_WRONLY | C.O_CREAT | C.O_EXCL | (C.O_NOFOLLOW ?? 0), 0o600);
    } catch (e) {
      if (e.code === 'EEXIST') throw new LinkRefused(`the temp file ${[...parts.slice(0, -1), tmpName].join('/')} already exists (left over, or planted); refusing to write through it`);
      throw e;
    }
    try {
      let off = 0;
      while (off < bytes.byteLength) off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
      fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      try { fs.unlinkSync(at(d, tmpName)); } catch { /* best effort */ }
      throw e;
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(at(d, tmpName), at(d, name));
    } catch (e) {
      try { fs.unlinkSync(at(d, tmpName)); } catch { /* best effort */ }
      throw e;
    }
    fsyncDirHandle(d);
  } finally {
    closeDir(d);
  }
}

/** Remove `root/parts...` (a file or a tree) without following a link on the way. */
function removeAt(root, parts) {
  let d;
  try {
    d = openDirChain(root, parts.slice(0, -1), { create: false });
  } catch (e) {
    if (e.code === 'ENOENT') return; // nothing there
    throw e;
  }
  try {
    fs.rmSync(at(d, parts.at(-1)), { recursive: true, force: true });
  } finally {
    closeDir(d);
  }
}

/** Remove a whole directory tree we own (best effort), moving it aside first so its name is free at once. */
function eraseTree(dir) {
  const aside = path.join(path.dirname(dir), `.erase-${path.basename(dir)}-${process.pid}-${Date.now().toString(36)}`);
  try {
    fs.renameSync(dir, aside);
  } catch (e) {
    if (e.code === 'ENOENT') return;
    try { fs.rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
    return;
  }
  try { fs.rmSync(aside, { recursive: true, force: true }); } catch { /* best effort */ }
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

/** A small JSON file, not through a symbolic link; undefined when absent or bad. */
function readJsonNoFollow(file) {
  try {
    const fd = fs.openSync(file, C.O_RDONLY | (C.O_NOFOLLOW ?? 0) | (C.O_NONBLOCK ?? 0));
    try { return JSON.parse(fs.readFileSync(fd, 'utf8')); } finally { fs.closeSync(fd); }
  } catch {
    return undefined;
  }
}

/** The live sandbox pid recorded in `sbDir`/job.json, or undefined. */
function liveSandboxPid(sbDir) {
  const j = readJsonNoFollow(path.join(sbDir, 'job.json'));
  if (Number.isInteger(j?.pid) && alive(j.pid) && isSandboxPid(j.pid)) return j.pid;
  return undefined;
}

/**
 * Erase every directory under `dir` whose sandbox is not running any more
 * (no live sandbox process per its job.json): sandbox directories are used
 * once. Returns the names erased.
 */
export function sweepSandboxDirs(dir) {
  let names = [];
  try { names = fs.readdirSync(dir); } catch { return []; }
  const erased = [];
  for (const n of names) {
    const full = path.join(dir, n);
    let st;
    try { st = fs.lstatSync(full); } catch { continue; }
    if (!st.isDirectory()) {
      if (st.isSymbolicLink()) { try { fs.unlinkSync(full); erased.push(n); } catch { /* ignore */ } }
      continue;
    }
    if (liveSandboxPid(full) !== undefined) continue;
    eraseTree(full);
    erased.push(n);
  }
  return erased;
}

/** Erase `dir` once `pid` is gone (SIGKILLed after `killAfterMs`). */
function eraseWhenGone(pid, dir, { killAfterMs = 3000 } = {}) {
  const start = Date.now();
  let killed = false;
  const tick = () => {
    if (alive(pid) && isSandboxPid(pid)) {
      if (!killed && Date.now() - start >= killAfterMs) { killed = true; killGroup(pid, 'SIGKILL'); }
      if (Date.now() - start < killAfterMs + 10_000) return void setTimeout(tick, 100).unref?.();
    }
    eraseTree(dir);
  };
  tick();
}

/** Stop every sandbox process recorded under `dir` (cluster down), then erase their directories. */
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
  if (pids.length) {
    const until2 = Date.now() + 2000;
    while (pids.some(alive) && Date.now() < until2) await new Promise((r) => setTimeout(r, 50));
  }
  sweepSandboxDirs(dir);
  return pids.length;
}

// ---- what file-read refuses -----------------------------------------------

/**
 * Well-known places that hold secrets: [path (~ = home), what it is]. A path
 * that resolves (symbolic links followed) into one of them is never read for
 * cloud_offload; nor is anything in this node's own state directory.
 */
const SECRET_PLACES = [
  ['~/.ssh', 'your SSH keys'],
  ['~/.gnupg', 'your GnuPG keys'],
  ['~/.aws', 'your AWS credentials'],
  ['~/.kube', 'your Kubernetes credentials'],
  ['~/.docker/config.json', 'your Docker registry credentials'],
  ['~/.netrc', 'your network login passwords'],
  ['~/.kars', "the kars plugin's identity"],
  ['~/.kars-mesh', 'a kars-mesh state directory with secret keys'],
  ['~/.kars-mesh-cluster', "a kars cluster's controller and sandbox keys"],
  ['~/.openclaw/kars-mesh', "the kars-mesh OpenClaw plugin's state directory with secret keys"],
  ['~/.config/gcloud', 'your Google Cloud credentials'],
  ['~/.azure', 'your Azure credentials'],
  ['~/.openclaw/credentials', "OpenClaw's stored credentials"],
  ['~/.openclaw/identity', "OpenClaw's device identity keys"],
  ['/etc/shadow', 'the system password hashes'],
  ['/etc/gshadow', 'the system group password hashes'],
  ['/proc', 'a kernel interface (process memory, environment and secrets), not a file to send'],
  ['/sys', 'a kernel interface, not a file to send'],
];

function realOr(p) {
  try { return fs.realpathSync(p); } catch { return p; }
}

const inside = (p, dir) => p === dir || p.startsWith(dir.endsWith(path.sep) ? dir : dir + path.sep);

/**
 * The places a file-read must not reach: [{dir, label, why}] with each dir
 * both as written and resolved (so a link to them, or from them, counts).
 */
function refusedPlaces(stateDir) {
  const homes = new Set([os.homedir(), process.env.HOME].filter(Boolean).map((h) => path.resolve(h)));
  const out = [];
  const add = (dir, label, why) => {
    for (const d of new Set([path.resolve(dir), realOr(path.resolve(dir))])) out.push({ dir: d, label, why });
  };
  if (stateDir) add(stateDir, 'the kars-mesh state directory', "which holds this agent's secret keys");
  for (const [p, what] of SECRET_PLACES) {
    if (p.startsWith('~/')) for (const h of homes) add(path.join(h, p.slice(2)), p, `which holds ${what}`);
    else add(p, p, `which holds ${what}`.replace('which holds a kernel', 'which is a kernel'));
  }
  return out;
}

function refusal(shownPath, place, full) {
  const where = full === place.dir ? `is ${place.label}` : `is inside ${place.label}`;
  return `refused: ${shownPath} ${where}, ${place.why}; cloud_offload does not send files from there. ` +
    'Copy the file you mean to send somewhere else (without any secrets in it) and pass that path';
}

/**
 * The kars-mesh state directory `p` is in, if any: a directory on its way
 * up that holds a `state.key` (any agent's, not only this node's: a CLI
 * `--state` directory, a sandbox's, a copy).
 */
function stateDirAbove(p) {
  for (let d = path.dirname(p); ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'state.key'))) {
      return { dir: d, label: `the kars-mesh state directory ${d}`, why: "which holds an agent's secret keys" };
    }
    if (path.dirname(d) === d) return undefined;
  }
}

// ---- isolation of the --exec command --------------------------------------

/**
 * Runs in the new namespaces as root there: hide each path under an empty
 * tmpfs, mount the work directory back (through the fd opened before it was
 * hidden), then run the command with every capability dropped, so it can
 * neither unmount what hides the secrets nor gain privileges.
 *   $1 work dir, $2 command, $3.. paths to hide
 */
const ISOLATE_PROLOGUE = [
  'fail() { echo "kars-mesh: cannot isolate the --exec command: $*; it was not run" >&2; exit 125; }',
  'work=$1; cmd=$2; shift 2',
  'exec 3<"$work" || fail "cannot open $work"',
  'for h in "$@"; do [ -d "$h" ] || continue; mount -t tmpfs -o mode=0700,size=64k kars-hidden "$h" || fail "cannot hide $h"; done',
  'mkdir -p "$work" || fail "cannot make $work"',
  'mount --no-canonicalize --bind /proc/self/fd/3 "$work" || fail "cannot mount $work back"',
  'exec 3<&-',
  'cd "$work" || fail "cannot enter $work"',
  'exec "$KARS_ISOLATE_SETPRIV" --bounding-set -all --inh-caps -all --ambient-caps -all --no-new-privs -- /bin/sh -c "$cmd"',
].join('\n');

function findTool(name, dirs = ['/usr/bin', '/bin', '/usr/sbin', '/sbin']) {
  for (const d of dirs) {
    const f = path.join(d, name);
    try { fs.accessSync(f, fs.constants.X_OK); return f; } catch { /* next */ }
  }
  return null;
}

const isolationCache = new Map();

/**
 * How to run a command isolated here: {ok: true, argv(work, cmd, hide)} or
 * {ok: false, why}. Probed once per tool set (a real run of the whole chain).
 */
export function isolationSupport({ unshare = findTool('unshare'), setpriv = findTool('setpriv') } = {}) {
  const key = `${unshare}\0${setpriv}`;
  if (isolationCache.has(key)) return isolationCache.get(key);
  let r;
  if (process.platform !== 'linux') r = { ok: false, why: 'mount namespaces need Linux' };
  else if (!unshare || !fs.existsSync(unshare)) r = { ok: false, why: `unshare (util-linux) is not installed${unshare ? ` at ${unshare}` : ''}` };
  else if (!setpriv || !fs.existsSync(setpriv)) r = { ok: false, why: `setpriv (util-linux) is not installed${setpriv ? ` at ${setpriv}` : ''}` };
  else {
    const flags = ['--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--mount-proc'];
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) flags.push('--user', '--map-root-user');
    const argv = (work, cmd, hide) => [unshare, [...flags, '/bin/sh', '-c', ISOLATE_PROLOGUE, 'sh', work, cmd, ...hide]];
    const probeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-isolate-probe-'));
    try {
      const [file, args] = argv(probeDir, 'echo isolated-ok', [probeDir]);
      const p = spawnSync(file, args, { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', KARS_ISOLATE_SETPRIV: setpriv } });
      r = p.status === 0 && p.stdout.includes('isolated-ok')
        ? { ok: true, argv, setpriv }
        : { ok: false, why: `unshare --mount${flags.includes('--user') ? ' --user' : ''} --pid failed here (${(p.stderr || p.error?.message || `exit ${p.status}`).trim().split('\n').pop()})` };
    } finally {
      fs.rmSync(probeDir, { recursive: true, force: true });
    }
  }
  isolationCache.set(key, r);
  return r;
}

/** The paths to hide from the command, parents only (a path inside another is hidden with it). */
function hideList(paths) {
  const abs = [...new Set(paths.filter(Boolean).map((p) => path.resolve(p)))].sort();
  return abs.filter((p, i) => !abs.slice(0, i).some((q) => inside(p, q)));
}
/**
 * @param {object} o
 * @param {string} o.filesDir  private directory for core-written files
 * @param {(ev:object)=>void} o.dispatch  feeds events to the core
 * @param {(level:string,msg:string)=>void} o.log
 * @param {string} [o.stateDir]  this node's state directory: file-read never reads from it
 * @param {{dir:string, exec?:string, execUnisolated?:boolean, hide?:string[], relayUrl:string, registryUrl:string, relayToken?:string, progressMs?:number}} [o.sandboxes]
 *        controller: where sandboxes live; `hide`: paths their --exec command must not see
 * @param {string} [o.exec]  sandbox: the operator's command for "exec" jobs
 * @param {boolean} [o.execUnisolated]  sandbox: run it without namespace isolation (operator's opt-out)
 * @param {string[]} [o.execHide]  sandbox: paths hidden from the command (the controller's state, the sandboxes directory, ...)
 * @param {{unshare?:string, setpriv?:string}} [o.isolationTools]  tests only: where unshare/setpriv are
 */
export function createJobs({ filesDir, dispatch, log, sandboxes, exec, execUnisolated = false, execHide = [], stateDir, isolationTools }) {
  const root = path.resolve(filesDir);
  /** job id (bigint) -> { child, kind, dir } */
  const running = new Map();
  let places = null; // computed on the first file-read

  // A controller starting: directories of sandboxes that are not running any
  // more are erased (used once; their state.key and inputs go with them).
  if (sandboxes?.dir) {
    const erased = sweepSandboxDirs(path.resolve(sandboxes.dir));
    if (erased.length) log('info', `host: erased ${erased.length} directory(ies) of sandboxes that are not running any more`);
  }

  function placeOf(p) {
    places ??= refusedPlaces(stateDir);
    return places.find((pl) => inside(p, pl.dir));
  }

  function fileRead({ id, path: p, maxBytes }) {
    (async () => {
      const shown = String(p);
      const full = path.resolve(expandHome(shown));
      // Refused by the path as given, by where it resolves, and by what was actually opened.
      let place = placeOf(full);
      let real;
      if (!place) {
        try { real = await fs.promises.realpath(full); } catch (e) { if (e.code !== 'ENOENT') throw e; }
        if (real) place = placeOf(real);
      }
      // Any other agent's state directory, where the file really is.
      place ??= stateDirAbove(real ?? full);
      if (place) return { tag: 'file-failed', val: { id, message: refusal(shown, place, full) } };
      // O_NONBLOCK: a FIFO does not hang the read; it is refused below as not a regular file.
      const fh = await fs.promises.open(full, C.O_RDONLY | (C.O_NONBLOCK ?? 0));
      try {
        if (PROC_FD) {
          let opened;
          try { opened = await fs.promises.readlink(`${PROC_FD}/${fh.fd}`); } catch { /* keep the earlier checks */ }
          if (opened && (place = placeOf(opened) ?? stateDirAbove(opened))) return { tag: 'file-failed', val: { id, message: refusal(shown, place, opened) } };
        }
        const st = await fh.stat();
        if (!st.isFile()) throw new Error('not a regular file');
        if (BigInt(st.size) > BigInt(maxBytes)) return { tag: 'file-failed', val: { id, message: `too large: ${st.size}` } };
        const bytes = await fh.readFile();
        if (BigInt(bytes.length) > BigInt(maxBytes)) return { tag: 'file-failed', val: { id, message: `too large: ${bytes.length}` } };
        return { tag: 'file-loaded', val: { id, bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length) } };
      } finally {
        await fh.close();
      }
    })().then(
      (ev) => dispatch(ev),
      (e) => {
        // A relative path is read from this process's working directory
        // (the Gateway's, for a tool call): say which, since it may not be
        // the one the user thinks of.
        const from = path.isAbsolute(expandHome(String(p))) ? '' : ` (a relative path is read from ${process.cwd()})`;
        const why = e?.code === 'ENOENT' ? `no such file${from}` : e?.code === 'EACCES' ? 'permission denied' : e?.code === 'EISDIR' ? 'not a regular file' : String(e?.message ?? e);
        dispatch({ tag: 'file-failed', val: { id, message: why } });
      },
    );
  }

  /** A relative path the core chose, as checked parts below root, or null. */
  function relParts(rel) {
    return safeJoin(root, rel) ? rel.split('/') : null;
  }

  /** Synchronous and durable, like `store`: the core relies on the order. No link is followed. */
  function fileWrite(rel, bytes) {
    const parts = relParts(rel);
    if (!parts) throw new Error(`refusing to write outside the files directory: ${JSON.stringify(rel)}`);
    writeDurableAt(root, parts, bytes);
  }

  function fileErase(rel) {
    const parts = relParts(rel);
    if (!parts) throw new Error(`refusing to erase outside the files directory: ${JSON.stringify(rel)}`);
    removeAt(root, parts);
  }

  function exited(id, code, outputs, logText, refused = []) {
    running.delete(id);
    dispatch({ tag: 'job-exited', val: { id, code, outputs, refused, log: tail(logText) } });
  }

  function startSandbox(id, specJson) {
    if (!sandboxes?.dir) return exited(id, -1, [], 'this controller has no sandbox directory configured');
    let spec;
    try { spec = JSON.parse(specJson); } catch { return exited(id, -1, [], 'bad sandbox spec'); }
    const name = String(spec.name ?? '');
    const sbRoot = path.resolve(sandboxes.dir);
    const dir = safeJoin(sbRoot, name);
    if (!dir || !/^[a-z0-9-]{1,63}$/.test(name)) return exited(id, -1, [], 'bad sandbox name');
    mkdirPrivate(sbRoot);
    // One use per directory: a new one each time (mkdir fails on anything
    // that exists, a symbolic link included, and follows nothing).
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      // The same job started again (a controller restart before its sandbox
      // was up): its leftover process goes, and so does its directory.
      const old = readJsonNoFollow(path.join(dir, 'job.json'));
      const oldSpec = readJsonNoFollow(path.join(dir, 'spec.json'));
      const sameJob = old?.job === String(id) && oldSpec?.request_id !== undefined && oldSpec.request_id === spec.request_id;
      if (!sameJob) {
        return exited(id, -1, [], `sandbox directory ${name} already exists; a sandbox directory is used once, so this sandbox was not started`);
      }
      if (Number.isInteger(old.pid) && alive(old.pid) && isSandboxPid(old.pid)) killGroup(old.pid, 'SIGKILL');
      eraseTree(dir);
      try {
        fs.mkdirSync(dir, { mode: 0o700 });
      } catch (e2) {
        return exited(id, -1, [], `cannot make a fresh sandbox directory ${name}: ${e2.code ?? e2.message}`);
      }
    }
    if (sandboxes.exec) spec.executor = 'exec';
    if (sandboxes.progressMs) spec.progress_ms = sandboxes.progressMs;
    writeDurableAt(sbRoot, [name, 'spec.json'], Buffer.from(JSON.stringify(spec)));
    const args = [SANDBOX_MAIN, '--state', path.join(dir, 'state'), '--spec', path.join(dir, 'spec.json'),
      '--relay', sandboxes.relayUrl, '--registry', sandboxes.registryUrl];
    if (sandboxes.exec) {
      args.push('--exec', sandboxes.exec);
      if (sandboxes.execUnisolated) args.push('--exec-unisolated');
      for (const h of hideList([sbRoot, ...(sandboxes.hide ?? [])])) args.push('--hide', h);
    }
    // Only what a sandbox needs: the operator's other secrets stay out of it
    // (and out of the command it runs, which could read its parent's env).
    const env = {};
    for (const k of ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'SYSTEMROOT']) if (process.env[k]) env[k] = process.env[k];
    if (sandboxes.relayToken) env.KARS_MESH_RELAY_TOKEN = sandboxes.relayToken;
    const out = fs.openSync(path.join(dir, 'sandbox.log'), C.O_WRONLY | C.O_CREAT | C.O_APPEND | (C.O_NOFOLLOW ?? 0), 0o600);
    let child;
    try {
      child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', out], env });
    } catch (e) {
      fs.closeSync(out);
      eraseTree(dir);
      return exited(id, -1, [], `cannot start the sandbox: ${e.message}`);
    }
    fs.closeSync(out);
    writeDurableAt(sbRoot, [name, 'job.json'], Buffer.from(JSON.stringify({ job: String(id), pid: child.pid })));
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
      // Its process group too (anything it left running), then its directory: used once.
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* the group is gone */ }
      eraseTree(dir);
      if (running.get(id) === entry) exited(id, signal ? -1 : code ?? -1, [], logText);
    });
    child.unref();
    child.stdout.unref?.();
  }

  function startExec(id, specJson) {
    if (!exec) return exited(id, -1, [], 'no --exec command is configured for this sandbox');
    let spec;
    try { spec = JSON.parse(specJson); } catch { return exited(id, -1, [], 'bad exec spec'); }
    const workRel = String(spec.workdir ?? 'work');
    const workParts = relParts(workRel);
    if (!workParts) return exited(id, -1, [], 'bad work directory');
    const work = path.join(root, ...workParts);
    const outDir = path.join(work, 'out');
    let isolation = null;
    let warning = '';
    if (execUnisolated) {
      warning = '[kars-mesh: WARNING: the --exec command runs WITHOUT isolation (--exec-unisolated): it can read everything this user can, the cluster\'s keys included]\n';
      log('warn', 'host: running the --exec command without isolation (--exec-unisolated)');
    } else {
      isolation = isolationSupport(isolationTools);
      if (!isolation.ok) {
        removeAt(root, workParts);
        return exited(id, -1, [],
          `kars-mesh: refusing to run the --exec command: it cannot be isolated on this machine (${isolation.why}). ` +
          'Unisolated, it could read the controller\'s state.key, other sandboxes\' directories and this sandbox\'s own keys. ' +
          'Fix: install util-linux (unshare, setpriv) and allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0), ' +
          'or, accepting that risk, start the cluster with: kars-mesh cluster up --exec CMD --exec-unisolated');
      }
    }
    try {
      closeDir(openDirChain(root, [...workParts, 'in'], { create: true }));
      removeAt(root, [...workParts, 'out']);
      closeDir(openDirChain(root, [...workParts, 'out'], { create: true }));
    } catch (e) {
      return exited(id, -1, [], `cannot prepare the work directory: ${e.message}`);
    }
    const env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: work,
      LANG: process.env.LANG ?? 'C.UTF-8',
      KARS_INPUT_DIR: path.join(work, 'in'),
      KARS_OUTPUT_DIR: outDir,
    };
    for (const [k, v] of Object.entries(spec.env ?? {})) if (/^KARS_[A-Z_]+$/.test(k)) env[k] = String(v);
    let logText = warning;
    let file = '/bin/sh';
    let args = ['-c', exec];
    if (isolation) {
      // This sandbox's own state (its state.key) is hidden with the rest;
      // only `work` comes back.
      const hide = hideList([...execHide, path.dirname(root), ...homeSecretDirs()]);
      [file, args] = isolation.argv(work, exec, hide);
      env.KARS_ISOLATE_SETPRIV = isolation.setpriv;
    }
    const child = spawn(file, args, { cwd: work, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const entry = { child, kind: 'exec', dir: work, parts: workParts };
    running.set(id, entry);
    const add = (d) => { logText = tail(logText + d); };
    const progress = throttled((rest) => {
      if (running.get(id) === entry) dispatch({ tag: 'job-progress', val: [id, rest] });
    }, PROGRESS_EVERY_MS);
    const stdout = progressLines((rest) => progress.push(rest));
    child.stdout.setEncoding('utf8').on('data', (d) => add(stdout.take(d)));
    child.stderr.setEncoding('utf8').on('data', add);
    const ms = Number(spec.timeout_ms) > 0 ? Math.min(Number(spec.timeout_ms), 2 ** 31 - 1) : 30 * 60_000;
    const t = setTimeout(() => { add(`\n[killed after ${Math.round(ms / 1000)}s]\n`); killGroup(child.pid, 'SIGKILL'); }, ms);
    t.unref?.();
    child.on('error', (e) => add(`\n${e.message}\n`));
    child.on('close', (code, signal) => {
      clearTimeout(t);
      add(stdout.end());
      // The last report goes before the exit.
      progress.flush();
      if (running.get(id) !== entry) {
        try { removeAt(root, workParts); } catch { /* best effort */ }
        return;
      }
      let outputs = [];
      let refused = [];
      let d;
      try {
        // out/ must still be our directory, not a link the command put in
        // its place; each output is opened inside it with O_NOFOLLOW.
        try {
          d = openDirChain(root, [...workParts, 'out'], { create: false });
        } catch (e) {
          throw new Error(e instanceof LinkRefused ? 'the output directory was replaced' : e.message);
        }
        ({ outputs, refused } = collectOutputs(d, outputLimits(spec)));
      } catch (e) {
        add(`\n[outputs not collected: ${e.message}]\n`);
      } finally {
        closeDir(d);
      }
      // Outputs are read: the work directory (inputs, outputs, scratch) goes.
      try { removeAt(root, workParts); } catch (e) { log('warn', `host: cannot erase the work directory: ${e.message}`); }
      exited(id, signal ? -1 : code ?? -1, outputs, logText, refused);
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
      // The exit handlers erase the directories.
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
        const dir = path.join(sandboxes.dir, n);
        const j = readJsonNoFollow(path.join(dir, 'job.json'));
        if (j?.job !== String(id)) continue;
        if (Number.isInteger(j.pid) && alive(j.pid) && isSandboxPid(j.pid)) {
          killGroup(j.pid, 'SIGTERM');
          eraseWhenGone(j.pid, dir);
        } else {
          eraseTree(dir);
        }
      } catch { /* not a sandbox dir */ }
    }
  }

  /** Host stopping: exec jobs die with us (their work directories go); sandboxes are independent peers. */
  function stopAll() {
    for (const [id, e] of running) {
      if (e.kind === 'exec') {
        killGroup(e.child.pid, 'SIGKILL');
        try { removeAt(root, e.parts); } catch { /* best effort */ }
      }
      running.delete(id);
    }
  }

  return { fileRead, fileWrite, fileErase, jobStart, jobKill, stopAll };
}

/** The well-known secret directories under the user's home that exist (hidden from --exec commands). */
function homeSecretDirs() {
  const out = [];
  for (const [p] of SECRET_PLACES) {
    if (!p.startsWith('~/')) continue;
    const full = path.join(os.homedir(), p.slice(2));
    try { if (fs.lstatSync(full).isDirectory()) out.push(full); } catch { /* none */ }
  }
  return out;
}
