// Durable file storage for the Node host: one state directory per identity.
//
//   <dir>/            mode 0700
//   <dir>/lock        pid of the process using the directory (single instance)
//   <dir>/state.key   32 random bytes, mode 0600: the key the core seals records with
//   <dir>/records/    one file per storage key, mode 0600
//   <dir>/MOVED.json  only in a directory the OpenClaw plugin imported elsewhere
//                     (state-location.js): opening it is refused (refuseMovedDir)
//
//   import { openStateDir } from './storage-fs.js';
//   const store = openStateDir('/home/me/.kars-mesh');   // creates, locks, indexes
//   store.stateKey();                                   // Uint8Array(32)
//   store.get(key) / store.list(prefix) / store.set(key, bytes) / store.delete(key)
//   store.close();                                      // releases the lock
//
// Writes are durable when `set`/`delete` return: temp file in the same
// directory, fsync, rename over the old file, fsync the directory. A crash
// leaves either the old or the new record, never a torn one.
//
// Record file names are the keys escaped reversibly: bytes outside
// [a-z0-9._-] become %XX (uppercase hex of the UTF-8 bytes), so '/' is %2F,
// '%' is %25 and upper-case letters are escaped too (distinct keys stay
// distinct on case-insensitive file systems). A leading '.' is escaped, so no
// record is hidden or named '.'/'..', and temp files ('.tmp-*') never collide
// with records. The empty key is stored as '%'.
//
// With `sealedOnly` (what node-host.js uses for the real core), `set` refuses
// anything that is not a well-formed sealed record (src/crypto/seal.rs:
// version(1) || nonce(12) || ciphertext || tag(16), version 1 or 2): a
// core that tries to store plaintext is stopped before a byte reaches disk.
//
// All functions here are synchronous: the core's host imports are synchronous,
// and `store` must land before the next command is carried out.

import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { isRunning, procInfo } from './proc.js';
import { StateDirError } from './node-error.js';
import { SEAL_VERSIONS, MIN_SEALED_LEN, notSealedReason, NotSealedError } from './sealed.js';

const RECORDS = 'records';
const STATE_KEY = 'state.key';
const LOCK = 'lock';
const STATE_KEY_LEN = 32;
const MAX_NAME = 255;
const isWindows = process.platform === 'win32';

// StateDirError lives in node-error.js and the sealed-record check in
// sealed.js (the browser host uses both); re-exported here as before.
export { StateDirError, SEAL_VERSIONS, MIN_SEALED_LEN, notSealedReason, NotSealedError };

// ---------------------------------------------------------------------------
// Key escaping

const SAFE = /^[a-z0-9._-]$/;

/** Storage key -> record file name (reversible, see the header). */
export function encodeKey(key) {
  if (typeof key !== 'string') throw new TypeError('storage key must be a string');
  if (key === '') return '%';
  let out = '';
  const bytes = Buffer.from(key, 'utf8');
  // Walk characters for the safe set (all ASCII), bytes for the rest.
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    const ch = b < 0x80 ? String.fromCharCode(b) : '';
    if (ch && SAFE.test(ch) && !(i === 0 && ch === '.')) out += ch;
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Record file name -> storage key, or undefined for a name this module did not write. */
export function decodeKey(name) {
  if (name === '%') return '';
  if (name === '' || !/^(?:[a-z0-9._-]|%[0-9A-F]{2})+$/.test(name) || name.startsWith('.')) return undefined;
  const bytes = [];
  for (let i = 0; i < name.length; ) {
    if (name[i] === '%') {
      bytes.push(parseInt(name.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      bytes.push(name.charCodeAt(i));
      i += 1;
    }
  }
  const buf = Buffer.from(bytes);
  const key = buf.toString('utf8');
  // Only canonical encodings round-trip (rejects invalid UTF-8 and over-escaping).
  return encodeKey(key) === name ? key : undefined;
}

// ---------------------------------------------------------------------------
// Small fs helpers

export function fsyncDir(dir) {
  if (isWindows) return; // directories cannot be opened for fsync there
  let fd;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch (e) {
    // Some file systems refuse fsync on a directory; the rename is still atomic.
    if (!['EINVAL', 'ENOTSUP', 'EISDIR', 'EPERM', 'EBADF'].includes(e.code)) throw e;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeAllSync(fd, bytes) {
  let off = 0;
  while (off < bytes.byteLength) off += fs.writeSync(fd, bytes, off, bytes.byteLength - off);
}

function tempName(dir) {
  return path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
}

/** Write `bytes` to a fresh 0600 temp file in `dir`, fsynced; returns its path. */
function writeTemp(dir, bytes) {
  const tmp = tempName(dir);
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    writeAllSync(fd, bytes);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    try { fs.unlinkSync(tmp); } catch { /* best effort */ }
    throw e;
  }
  fs.closeSync(fd);
  return tmp;
}

/**
 * Create `target` exclusively with the given content, atomically: the file
 * never exists half-written (temp file + hard link, which fails if the target
 * exists). Falls back to an O_EXCL create where hard links are unsupported.
 * Returns false if the target already exists.
 */
function createExclusive(dir, target, bytes) {
  const tmp = writeTemp(dir, bytes);
  try {
    fs.linkSync(tmp, target);
  } catch (e) {
    if (e.code === 'EEXIST') return false;
    if (!['EPERM', 'ENOTSUP', 'ENOSYS', 'EOPNOTSUPP', 'EXDEV', 'EMLINK'].includes(e.code)) throw e;
    // No hard links: plain exclusive create.
    let fd;
    try {
      fd = fs.openSync(target, 'wx', 0o600);
    } catch (e2) {
      if (e2.code === 'EEXIST') return false;
      throw e2;
    }
    try {
      writeAllSync(fd, bytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    try { fs.unlinkSync(tmp); } catch { /* best effort */ }
  }
  fsyncDir(dir);
  return true;
}

function modeString(mode) {
  return '0' + (mode & 0o777).toString(8);
}

/**
 * `mkdir -p` one level at a time. Node's `mkdirSync(dir, {recursive: true})`
 * never returns for a path whose parent exists but refuses children with
 * ENOENT (anything under /proc): it creates the parent again, gets EEXIST,
 * tries the child again, forever, on the main thread, so not even SIGTERM
 * gets through. Here each missing level is made once, and the first refusal
 * is thrown.
 */
export function makeDirs(dir, mode = 0o700) {
  const missing = [];
  for (let p = path.resolve(dir); ; ) {
    try {
      fs.statSync(p);
      break;
    } catch (e) {
      if (e.code !== 'ENOENT') throw e; // ENOTDIR, EACCES, ...: nothing to make
      missing.push(p);
      const parent = path.dirname(p);
      if (parent === p) break;
      p = parent;
    }
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d, { mode });
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
  }
}

/** Why `dir` cannot be created, in words (the system's message stays in parentheses). */
function cannotCreate(e) {
  const why = {
    ENOENT: 'its parent directory does not take new directories',
    EACCES: 'permission denied',
    EPERM: 'not permitted',
    EROFS: 'the file system is read-only',
    ENOTDIR: 'a part of the path is a file, not a directory',
    ENOSPC: 'no space left on the device',
  }[e?.code];
  return why ? `${why} (${e.message})` : e?.message ?? String(e);
}

export function ensurePrivateDir(dir, what) {
  try {
    makeDirs(dir, 0o700);
  } catch (e) {
    throw new StateDirError(`cannot create ${what} ${dir}: ${cannotCreate(e)}`, { cause: e, code: 'KARS_MESH_STATE_DIR_CREATE' });
  }
  let st;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new StateDirError(`cannot read ${what} ${dir}: ${e.message}`, { cause: e });
  }
  if (!st.isDirectory()) throw new StateDirError(`${what} ${dir} exists but is not a directory`);
  if (!isWindows && (st.mode & 0o077) !== 0) {
    // Tighten a directory we own (e.g. made by a plain `mkdir`); refuse one we do not.
    if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
      throw new StateDirError(
        `${what} ${dir} is accessible by group/others (mode ${modeString(st.mode)}) and owned by another user; use a private directory (chmod 700)`,
      );
    }
    try {
      fs.chmodSync(dir, 0o700);
    } catch (e) {
      throw new StateDirError(`cannot make ${what} ${dir} private (chmod 700): ${e.message}`, { cause: e });
    }
  }
}

// ---------------------------------------------------------------------------
// A state directory that was moved

/**
 * The note the OpenClaw plugin leaves in a state directory it imported
 * (js-host/state-location.js): `{moved_to, imported_at, ...}`.
 */
export const MOVED_MARKER = 'MOVED.json';

/**
 * Refuse a state directory whose identity was moved elsewhere: the same
 * identity used from two places breaks its encrypted sessions (each copy
 * would advance its ratchets without the other).
 */
export function refuseMovedDir(dir) {
  const marker = path.join(dir, MOVED_MARKER);
  let text;
  try {
    text = fs.readFileSync(marker, 'utf8');
  } catch {
    return;
  }
  let to;
  try {
    to = JSON.parse(text)?.moved_to;
  } catch { /* unreadable note: still refused */ }
  const where = typeof to === 'string' && to ? to : 'another place (see the note)';
  throw new StateDirError(
    `state directory ${dir} was imported into ${where} and is not used any more (${marker}): ` +
      `one identity used from two places breaks its encrypted sessions. Use ${where} (--state or KARS_MESH_STATE), ` +
      `or, to go back to this copy, stop everything using ${where} and delete ${marker}.`,
    { code: 'KARS_MESH_STATE_MOVED' },
  );
}

// ---------------------------------------------------------------------------
// Single-instance lock

/**
 * Lock files held by this process (absolute paths), released on exit: one
 * set and one exit hook for the whole process, not one per copy of this
 * module. A plugin host may load the plugin afresh on every config reload
 * (OpenClaw does), and each copy's own hook piled up on `process` (Node's
 * "11 exit listeners" warning in a long-running Gateway); a lock one copy
 * holds must not look stale to another either.
 */
const HELD_LOCKS = Symbol.for('kars-mesh.state-dir-locks');
const heldLocks = (globalThis[HELD_LOCKS] ??= new Set());

function installExitHook() {
  if (heldLocks.exitHook) return;
  heldLocks.exitHook = true;
  process.on('exit', () => {
    for (const lockPath of heldLocks) releaseLockFile(lockPath);
  });
}

/**
 * The lock's holder as written by `acquireLock`: `{pid, starttime}` (starttime
 * is /proc's, absent in locks from older versions or without /proc), NaN pid
 * for an unreadable file, undefined when there is no lock. A holder that is
 * not `isRunning` (gone, a zombie nobody reaped, or a later process given the
 * same pid) holds nothing.
 */
function readLock(lockPath) {
  let text;
  try {
    text = fs.readFileSync(lockPath, 'utf8');
  } catch (e) {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  }
  const [first, second] = text.split('\n');
  const pid = Number.parseInt(first.trim(), 10);
  const starttime = /^[0-9]+$/.test(second?.trim() ?? '') ? second.trim() : undefined;
  return { pid: Number.isSafeInteger(pid) && pid > 0 ? pid : NaN, starttime };
}

function releaseLockFile(lockPath) {
  heldLocks.delete(lockPath);
  try {
    if (readLock(lockPath)?.pid === process.pid) {
      fs.unlinkSync(lockPath);
      fsyncDir(path.dirname(lockPath));
    }
  } catch {
    /* best effort: a stale lock is taken over on the next start */
  }
}

/**
 * Take `<dir>/lock` for this process. A lock whose pid is not alive (or is our
 * own pid without this process holding it, as after a container restart) is
 * stale and taken over. Returns `{ path, release() }`.
 */
export function acquireLock(dir) {
  const lockPath = path.resolve(dir, LOCK);
  if (heldLocks.has(lockPath)) throw inUse(dir, process.pid, lockPath);
  const content = Buffer.from(`${process.pid}\n${procInfo(process.pid)?.starttime ?? ''}\n`);
  for (let attempt = 0; attempt < 5; attempt++) {
    let created;
    try {
      created = createExclusive(dir, lockPath, content);
    } catch (e) {
      // Say what to do, not only the errno (a read-only directory of one's own gave just EACCES).
      const fix =
        e.code === 'EACCES' || e.code === 'EPERM'
          ? ` (this user may not write in ${dir}: make it writable for this user, or use another state directory)`
          : e.code === 'EROFS'
            ? ` (${dir} is on a read-only file system: use a state directory on a writable one)`
            : e.code === 'ENOSPC'
              ? ' (the disk is full: free some space)'
              : '';
      throw new StateDirError(`cannot create lock file ${lockPath}: ${e.message}${fix}`, { cause: e });
    }
    if (created) {
      heldLocks.add(lockPath);
      installExitHook();
      return { path: lockPath, release: () => releaseLockFile(lockPath) };
    }
    let holder;
    try {
      holder = readLock(lockPath);
    } catch (e) {
      throw new StateDirError(`cannot read lock file ${lockPath}: ${e.message}`, { cause: e });
    }
    if (holder === undefined) continue; // vanished meanwhile: try again
    const { pid } = holder;
    const stale = Number.isNaN(pid) || (pid === process.pid ? !heldLocks.has(lockPath) : !isRunning(holder));
    if (!stale) throw inUse(dir, pid, lockPath);
    // Take over: move the stale file aside, check it is the one we judged stale.
    const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      fs.renameSync(lockPath, aside);
    } catch (e) {
      if (e.code === 'ENOENT') continue;
      throw new StateDirError(`cannot take over stale lock ${lockPath}: ${e.message}`, { cause: e });
    }
    const moved = readLock(aside)?.pid;
    if (Object.is(moved, pid)) {
      fs.rmSync(aside, { force: true });
    } else {
      // Another process replaced the stale lock with a live one in between: put it back.
      try {
        fs.linkSync(aside, lockPath);
      } catch { /* someone holds it now anyway */ }
      fs.rmSync(aside, { force: true });
    }
  }
  throw new StateDirError(`could not take the lock ${lockPath} (other processes keep changing it); try again`);
}

function inUse(dir, pid, lockPath) {
  return new StateDirError(
    `state directory ${dir} is in use by process ${pid} (one process per identity: the relay allows one connection per agent). ` +
      `If no kars-mesh process has that pid, remove ${lockPath}.`,
    { code: 'KARS_MESH_STATE_LOCKED' },
  );
}

// ---------------------------------------------------------------------------
// State key

/**
 * The 32-byte state sealing key in `<dir>/state.key`, created once (0600,
 * exclusive create). Refuses a key file of the wrong size or readable by
 * group/others. With `create: false` a missing file is an error.
 */
export function loadStateKey(dir, { create = true, recordCount = 0 } = {}) {
  const keyPath = path.resolve(dir, STATE_KEY);
  for (let attempt = 0; attempt < 2; attempt++) {
    let fd;
    try {
      fd = fs.openSync(keyPath, fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0));
    } catch (e) {
      if (e.code === 'ELOOP') throw new StateDirError(`state key ${keyPath} is a symbolic link; it must be a regular file`);
      if (e.code !== 'ENOENT') throw new StateDirError(`cannot read state key ${keyPath}: ${e.message}`, { cause: e });
      if (!create) throw new StateDirError(`state key ${keyPath} is missing`);
      if (recordCount > 0) {
        throw new StateDirError(
          `state key ${keyPath} is missing, but ${dir} holds ${recordCount} record(s) sealed with it. ` +
            `Restore state.key from a backup, or move the directory aside to start a new identity.`,
        );
      }
      const key = randomBytes(STATE_KEY_LEN);
      let created;
      try {
        created = createExclusive(dir, keyPath, key);
      } catch (e2) {
        throw new StateDirError(`cannot create state key ${keyPath}: ${e2.message}`, { cause: e2 });
      } finally {
        if (!created) key.fill(0);
      }
      if (created) return new Uint8Array(key.buffer, key.byteOffset, key.byteLength);
      continue; // created by someone else meanwhile: read theirs
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new StateDirError(`state key ${keyPath} is not a regular file`);
      if (!isWindows && (st.mode & 0o077) !== 0) {
        throw new StateDirError(
          `state key ${keyPath} is readable by group/others (mode ${modeString(st.mode)}); ` +
            `it protects every secret in ${dir}. Run: chmod 600 ${keyPath}`,
        );
      }
      if (st.size !== STATE_KEY_LEN) {
        throw new StateDirError(
          `state key ${keyPath} is ${st.size} bytes, expected ${STATE_KEY_LEN}: it is damaged. ` +
            `Restore it from a backup, or move ${dir} aside to start a new identity.`,
        );
      }
      const key = Buffer.alloc(STATE_KEY_LEN);
      let off = 0;
      while (off < STATE_KEY_LEN) {
        const n = fs.readSync(fd, key, off, STATE_KEY_LEN - off, off);
        if (n === 0) throw new StateDirError(`state key ${keyPath} is shorter than ${STATE_KEY_LEN} bytes`);
        off += n;
      }
      return new Uint8Array(key.buffer, key.byteOffset, key.byteLength);
    } finally {
      fs.closeSync(fd);
    }
  }
  throw new StateDirError(`cannot create or read state key ${keyPath}`);
}

// ---------------------------------------------------------------------------
// Records

/**
 * Open (creating if needed) the records of a state directory without locking
 * it. Most callers want `openStateDir`, which also takes the lock.
 */
export function openRecords(dir, { sealedOnly = false } = {}) {
  const root = path.resolve(dir);
  ensurePrivateDir(root, 'state directory');
  const recDir = path.join(root, RECORDS);
  ensurePrivateDir(recDir, 'records directory');

  /** @type {Set<string>} original keys present on disk */
  const index = new Set();
  let names;
  try {
    names = fs.readdirSync(recDir);
  } catch (e) {
    throw new StateDirError(`cannot list ${recDir}: ${e.message}`, { cause: e });
  }
  for (const name of names) {
    if (name.startsWith('.tmp-')) {
      // Left by a crash between write and rename: the old record is intact.
      try { fs.unlinkSync(path.join(recDir, name)); } catch { /* ignore */ }
      continue;
    }
    const key = decodeKey(name);
    if (key !== undefined) index.add(key);
  }

  function fileOf(key) {
    const name = encodeKey(key);
    if (Buffer.byteLength(name) > MAX_NAME) {
      throw new RangeError(`storage key too long for a file name (${Buffer.byteLength(name)} bytes escaped, max ${MAX_NAME})`);
    }
    return path.join(recDir, name);
  }

  return {
    dir: root,
    recordsDir: recDir,
    /** Number of records (used to refuse creating a new state key over old records). */
    get size() {
      return index.size;
    },
    /** Synchronous read: Uint8Array, or undefined when absent. Throws on I/O errors. */
    get(key) {
      if (!index.has(key)) return undefined;
      try {
        const buf = fs.readFileSync(fileOf(key));
        return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
      } catch (e) {
        if (e.code === 'ENOENT') {
          index.delete(key); // removed behind our back
          return undefined;
        }
        throw e;
      }
    },
    /** Sorted original keys starting with `prefix`. */
    list(prefix = '') {
      const out = [];
      for (const k of index) if (k.startsWith(prefix)) out.push(k);
      return out.sort();
    },
    /** Durable write: temp file, fsync, rename over, fsync the directory. */
    set(key, bytes) {
      if (!(bytes instanceof Uint8Array)) throw new TypeError('storage value must be a Uint8Array');
      if (sealedOnly) {
        const why = notSealedReason(bytes, key);
        if (why) throw new NotSealedError(key, why);
      }
      const file = fileOf(key);
      const tmp = writeTemp(recDir, bytes);
      try {
        fs.renameSync(tmp, file);
      } catch (e) {
        try { fs.unlinkSync(tmp); } catch { /* ignore */ }
        throw e;
      }
      fsyncDir(recDir);
      index.add(key);
    },
    /** Durable delete: unlink, fsync the directory. Absent keys are fine. */
    delete(key) {
      const file = fileOf(key);
      try {
        fs.unlinkSync(file);
      } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
      fsyncDir(recDir);
      index.delete(key);
    },
  };
}

/**
 * Open a state directory for one process: creates it (0700), takes the
 * single-instance lock, indexes the records. `stateKey()` loads or creates the
 * sealing key; `close()` releases the lock. `sealedOnly`: `set` refuses what
 * is not a sealed record (NotSealedError), see the header.
 */
export function openStateDir(dir, { sealedOnly = false } = {}) {
  return openLocked(dir, (root) => openRecords(root, { sealedOnly }));
}

/**
 * A state directory for one process, whatever holds its records: creates it
 * (0700), takes the single-instance lock, then `open(root)` gives the records
 * (released again if that throws). The result reads and writes as the
 * records do, plus `lockPath`, `stateKey()` and `close()` (the records'
 * own `close`, if they have one, then the lock). Used by this module's
 * file records and by state-db.js.
 */
export function openLocked(dir, open) {
  if (!dir || typeof dir !== 'string') throw new StateDirError('no state directory given');
  const root = path.resolve(dir);
  refuseMovedDir(root);
  ensurePrivateDir(root, 'state directory');
  const lock = acquireLock(root);
  let records;
  try {
    records = open(root);
  } catch (e) {
    lock.release();
    throw e;
  }
  let closed = false;
  return Object.assign(Object.create(records), {
    lockPath: lock.path,
    stateKey() {
      return loadStateKey(root, { recordCount: records.size });
    },
    close() {
      if (closed) return;
      closed = true;
      try {
        records.close?.();
      } finally {
        lock.release();
      }
    },
  });
}
