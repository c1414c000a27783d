// Where the OpenClaw plugin keeps its state directory when the configuration
// names none, and the one-time import of a state directory the CLI (or an
// earlier plugin version) made in ~/.kars-mesh.
//
//   <OpenClaw state dir>/kars-mesh/       the default (OpenClaw's convention:
//                                         plugin state under its state dir,
//                                         declared in the manifest's
//                                         backupResources)
//   <OpenClaw state dir>-data/kars-mesh/  when OpenClaw's state dir cannot take
//   /sandbox/.openclaw-data/kars-mesh/    a new directory (NemoClaw's sandbox
//                                         image keeps ~/.openclaw read-only and
//                                         its writable state in .openclaw-data);
//                                         only when that -data directory exists
//
// A candidate that already holds a state directory wins; otherwise the first
// one a directory can be made in. None: a StateDirError that names every path
// tried, why it failed, and the fix. Nothing is written anywhere else.
//
// Import of ~/.kars-mesh (once, only into the default place, never when
// `state_dir` or KARS_MESH_STATE names a directory):
//   - only when the chosen directory holds no state yet and ~/.kars-mesh holds
//     an identity (state.key) and no MOVED.json;
//   - under ~/.kars-mesh's own lock (a CLI using it makes the import wait for
//     the next start, with a message saying so); a read-only ~/.kars-mesh
//     cannot be locked, nor written by anyone, and is copied as it is;
//   - every file is copied into a temporary sibling of the target, fsynced,
//     compared byte for byte with the original, and only then renamed into
//     place: a crash leaves either no target (the import runs again) or a
//     complete one;
//   - ~/.kars-mesh itself is left as it was, plus MOVED.json naming the new
//     place. Opening a directory that has MOVED.json is refused (storage-fs.js
//     refuseMovedDir): the same identity used from two places would break its
//     encrypted sessions. The CLI's default (~/.kars-mesh) follows MOVED.json
//     to the new place (`followMoved`), so the CLI and the Gateway keep sharing
//     one identity and take turns through its lock.
//   - Both exist (the target already has state and ~/.kars-mesh an identity
//     without MOVED.json): nothing is imported or changed, and a warning
//     names both.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { acquireLock, fsyncDir, StateDirError, MOVED_MARKER } from './storage-fs.js';

export { MOVED_MARKER };

/** The directory name of the plugin's state under OpenClaw's state directory. */
export const PLUGIN_STATE_NAME = 'kars-mesh';
/** The state directory the CLI uses by default (and the plugin did before). */
export const LEGACY_STATE_NAME = '.kars-mesh';
/** NemoClaw's writable twin of a read-only /sandbox/.openclaw. */
export const NEMOCLAW_DATA_DIR = '/sandbox/.openclaw-data';

const NOT_WRITABLE = new Set(['EACCES', 'EPERM', 'EROFS']);
const IMPORT_PREFIX = '.kars-mesh-import-';
/** Files of a state directory that belong to the process using it, not to the identity. */
const SKIP = (name) => name === 'lock' || name.startsWith('lock.stale-') || name.startsWith('.tmp-') || name === MOVED_MARKER;

/**
 * OpenClaw's state directory as OpenClaw resolves it when the plugin API does
 * not say (api.runtime.state.resolveStateDir is preferred): OPENCLAW_STATE_DIR
 * (a leading ~ is the home directory, another relative path is taken from
 * the working directory, as OpenClaw's resolveStateDir does: the same
 * directory as the Gateway's), else ~/.openclaw.
 *
 * Earlier versions took a relative path from the home directory: where only
 * that directory exists, it is kept, so an identity made there is not
 * replaced by a new one at the other place.
 */
export function openclawStateDirFromEnv(env = process.env, home = os.homedir(), cwd = process.cwd(), exists = isDir) {
  const override = typeof env.OPENCLAW_STATE_DIR === 'string' ? env.OPENCLAW_STATE_DIR.trim() : '';
  if (!override) return path.join(home, '.openclaw');
  if (override === '~') return home;
  if (override.startsWith('~/')) return path.join(home, override.slice(2));
  const here = path.resolve(cwd, override);
  const before = path.resolve(home, override);
  return before !== here && !exists(here) && exists(before) ? before : here;
}

function isDir(p) {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function exists(p) {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Whether a directory holds kars-mesh state (an identity or records). */
export function holdsState(dir) {
  return ['state.key', 'state.db', 'records'].some((f) => exists(path.join(dir, f)));
}

/** The places the plugin's default state directory may be, in order of preference. */
export function stateCandidates(openclawStateDir) {
  const root = path.resolve(openclawStateDir);
  const out = [path.join(root, PLUGIN_STATE_NAME)];
  for (const data of [`${root}-data`, NEMOCLAW_DATA_DIR]) {
    const c = path.join(data, PLUGIN_STATE_NAME);
    if (!out.includes(c) && isDir(data)) out.push(c);
  }
  return out;
}

/** Make `dir` (parent must exist) and check a file can be written in it; the reason it cannot, or undefined. */
function tryMakeWritable(dir) {
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if (e.code !== 'EEXIST') return `${e.code ?? 'error'}: ${e.message}`;
    if (!isDir(dir)) return 'exists but is not a directory';
  }
  const probe = path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    fs.writeFileSync(probe, '', { flag: 'wx', mode: 0o600 });
    fs.unlinkSync(probe);
  } catch (e) {
    return `${e.code ?? 'error'}: ${e.message}`;
  }
  return undefined;
}

/**
 * The plugin's state directory when no `state_dir` is configured: the first
 * candidate that already holds state, else the first that can be made
 * writable. Throws a StateDirError naming every path tried.
 */
export function chooseStateDir(openclawStateDir) {
  const candidates = stateCandidates(openclawStateDir);
  const withState = candidates.find((c) => isDir(c) && holdsState(c));
  if (withState) return withState;
  const tried = [];
  for (const c of candidates) {
    const why = tryMakeWritable(c);
    if (!why) return c;
    tried.push(`${c} (${why})`);
  }
  throw new StateDirError(
    `no writable place for the kars-mesh state directory; tried ${tried.join('; ')}. ` +
      `Set plugins.entries.kars-mesh.config.state_dir (or the environment variable KARS_MESH_STATE) ` +
      `to a directory the Gateway can write, or make ${candidates[0]} writable for it.`,
    { code: 'KARS_MESH_STATE_NO_PLACE' },
  );
}

/** MOVED.json of a state directory: `{moved_to, ...}`, or undefined. */
export function readMoved(dir) {
  let text;
  try {
    text = fs.readFileSync(path.join(dir, MOVED_MARKER), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const j = JSON.parse(text);
    return j && typeof j === 'object' ? j : {};
  } catch {
    return {};
  }
}

/**
 * For the CLI's default state directory: where `dir` was moved to (MOVED.json
 * written by the plugin's import), when that place holds the state; else `dir`.
 */
export function followMoved(dir) {
  const m = readMoved(dir);
  const to = m?.moved_to;
  if (typeof to === 'string' && path.isAbsolute(to) && isDir(to) && holdsState(to)) return to;
  return dir;
}

// ---- the import -----------------------------------------------------------

/** Regular files and directories under `dir` (relative paths), skipping the process's own files; symbolic links are an error. */
function walk(dir, rel = '', out = { files: [], dirs: [] }) {
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    if (rel === '' && SKIP(e.name)) continue;
    if (e.name.startsWith('.tmp-')) continue;
    const r = path.join(rel, e.name);
    if (e.isSymbolicLink()) {
      throw new StateDirError(`${path.join(dir, r)} is a symbolic link; a state directory holds none, so it was not imported`);
    }
    if (e.isDirectory()) {
      out.dirs.push(r);
      walk(dir, r, out);
    } else if (e.isFile()) {
      out.files.push(r);
    }
    // sockets, fifos: nothing a state directory keeps
  }
  return out;
}

function sha256File(p) {
  return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

function copyFileDurable(from, to) {
  const bytes = fs.readFileSync(from);
  const fd = fs.openSync(to, 'wx', 0o600);
  try {
    let off = 0;
    while (off < bytes.byteLength) off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Take ~/.kars-mesh's lock; null when it cannot be written at all (read-only: nobody else can use it either). */
function lockLegacy(legacy) {
  try {
    return acquireLock(legacy);
  } catch (e) {
    if (e?.code === 'KARS_MESH_STATE_LOCKED') {
      throw new StateDirError(
        `${legacy} is to be imported into OpenClaw's state directory, but it is in use (${e.message}). ` +
          `Stop that process (a kars-mesh CLI command?), then restart the Gateway; the import runs on the next start.`,
        { code: 'KARS_MESH_STATE_LOCKED', cause: e },
      );
    }
    if (NOT_WRITABLE.has(e?.cause?.code)) return null;
    throw e;
  }
}

/**
 * Copy the state directory `legacy` to `target` (which must not hold state),
 * verified, then mark `legacy` with MOVED.json. Returns
 * `{imported: true, files, bytes, marked, markError?}`.
 */
export function importStateDir(legacy, target, { now = () => new Date() } = {}) {
  const lock = lockLegacy(legacy);
  const parent = path.dirname(target);
  let tmp;
  try {
    if (readMoved(legacy)) return { imported: false, reason: `${legacy} was already imported (it has ${MOVED_MARKER})` };
    if (isDir(target) && holdsState(target)) return { imported: false, reason: `${target} already holds state` };
    const { files, dirs } = walk(legacy);
    // Left by an import that crashed (only while we hold the lock: another
    // import could be running otherwise).
    if (lock) {
      for (const n of fs.readdirSync(parent)) {
        if (n.startsWith(IMPORT_PREFIX)) fs.rmSync(path.join(parent, n), { recursive: true, force: true });
      }
    }
    tmp = fs.mkdtempSync(path.join(parent, IMPORT_PREFIX));
    fs.chmodSync(tmp, 0o700);
    for (const d of dirs) fs.mkdirSync(path.join(tmp, d), { mode: 0o700 });
    let bytes = 0;
    for (const f of files) {
      copyFileDurable(path.join(legacy, f), path.join(tmp, f));
      bytes += fs.statSync(path.join(tmp, f)).size;
    }
    // Verify: the same files, byte for byte (read back from the copy).
    const again = walk(legacy);
    if (again.files.length !== files.length || again.files.some((f, i) => f !== files[i])) {
      throw new StateDirError(`${legacy} changed while it was being imported; nothing was imported`);
    }
    for (const f of files) {
      if (sha256File(path.join(legacy, f)) !== sha256File(path.join(tmp, f))) {
        throw new StateDirError(`the copy of ${path.join(legacy, f)} does not match the original; nothing was imported`);
      }
    }
    for (const d of ['', ...dirs].reverse()) fsyncDir(path.join(tmp, d));
    // Into place: an empty target (made when the place was chosen) is replaced.
    try {
      fs.rmdirSync(target);
    } catch (e) {
      if (e.code !== 'ENOENT') throw new StateDirError(`cannot import into ${target}: ${e.message}`, { cause: e });
    }
    fs.renameSync(tmp, target);
    tmp = undefined;
    fsyncDir(parent);
    // Leave the original with a note where it went.
    const marker = {
      moved_to: target,
      imported_at: now().toISOString(),
      by: 'the kars-mesh OpenClaw plugin',
      note:
        `This identity now lives in ${target}. The files here are the copy it was made from; ` +
        `kars-mesh refuses to open this directory (one identity used from two places breaks its encrypted sessions). ` +
        `The kars-mesh CLI's default (~/.kars-mesh) follows this note to ${target}. Delete this directory once you no longer want it as a backup.`,
    };
    let marked = false;
    let markError;
    try {
      fs.writeFileSync(path.join(legacy, MOVED_MARKER), `${JSON.stringify(marker, null, 2)}\n`, { flag: 'wx', mode: 0o600 });
      fsyncDir(legacy);
      marked = true;
    } catch (e) {
      markError = e.message;
    }
    return { imported: true, files: files.length, bytes, marked, markError };
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    lock?.release();
  }
}

/**
 * The plugin's default state directory, with the import of ~/.kars-mesh done
 * when it applies. `log(level, message)` hears what happened.
 * @returns {string} the directory to start the node on
 */
export function prepareDefaultStateDir({ openclawStateDir, home = os.homedir(), log = () => {} }) {
  const target = chooseStateDir(openclawStateDir);
  const legacy = path.join(home, LEGACY_STATE_NAME);
  if (path.resolve(legacy) === path.resolve(target)) return target;
  if (!isDir(legacy) || !exists(path.join(legacy, 'state.key'))) return target;
  const moved = readMoved(legacy);
  if (holdsState(target)) {
    if (!moved) {
      log(
        'warn',
        `both ${target} (used) and ${legacy} hold a kars-mesh identity; ${legacy} was not imported and is left as it is. ` +
          `To use the identity of ${legacy} here instead: stop the Gateway, move ${target} aside, and start it again (it is imported then).`,
      );
    }
    return target;
  }
  if (moved) {
    log('warn', `${legacy} was imported into ${moved.moved_to ?? 'another place'} earlier (${MOVED_MARKER}); ${target} starts a new identity`);
    return target;
  }
  const r = importStateDir(legacy, target);
  if (r.imported) {
    log('info', `imported the kars-mesh state directory ${legacy} into ${target} (${r.files} files, ${r.bytes} bytes, verified)`);
    if (!r.marked) {
      log(
        'warn',
        `could not leave ${MOVED_MARKER} in ${legacy} (${r.markError}); do not use ${legacy} any more ` +
          `(the same identity in two places breaks its encrypted sessions): use kars-mesh --state ${target}`,
      );
    }
  }
  return target;
}
