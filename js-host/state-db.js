// The state directory on SQLite (node:sqlite, WAL): one database per identity.
//
//   <dir>/            mode 0700
//   <dir>/lock        pid of the process using the directory (single instance)
//   <dir>/state.key   32 random bytes, mode 0600: the key the core seals records with
//   <dir>/state.db    (+ -wal, -shm) mode 0600: table `records(key, value)`,
//                     every value a record sealed by the core; the database never
//                     sees a secret in the clear
//   <dir>/files/      received files (jobs.js), unchanged
//
//   import { openStateDir } from './state-db.js';
//   const store = openStateDir('/home/me/.kars-mesh', { sealedOnly: true });
//   store.get(key) / store.list(prefix)            reads (see uncommitted writes)
//   store.set(key, bytes) / store.delete(key)      writes: durable on return outside
//                                                  a batch, at commit() inside one
//   store.begin() ... store.commit()               group commit (js-host/engine-loop.js)
//   store.close()                                  closes the database, releases the lock
//
// Why SQLite: the 0.1.0 store (storage-fs.js) wrote one file per record, each
// with temp file, fsync, rename and a directory fsync; a round trip cost both
// nodes 11.5 such writes and 25 fsyncs. Here every store/erase of a batch of
// engine calls lands in one transaction, and one WAL fsync makes it durable
// (`synchronous = FULL`: a commit that returned survives power loss).
//
// A state directory written by 0.1.0 (one file per record under records/) is
// imported on first open: every record copied in one transaction, read back and
// compared after the commit, and only then the old files removed. A crash at any
// point leaves either the old files (imported again next time) or the committed
// database (the leftover files are removed next time).
//
// node:sqlite is built into Node 22.13+ (and the Node 24 OpenClaw requires): no
// native addon and no install script.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { checkKey, checkRecord } from './sealed.js';
import {
  StateDirError,
  NotSealedError,
  notSealedReason,
  ensurePrivateDir,
  openRecords,
  fsyncDir,
  openLocked,
} from './storage-fs.js';

export { StateDirError, NotSealedError, notSealedReason };

const DB_FILE = 'state.db';
const LEGACY_RECORDS = 'records';
const FORMAT = '1';

/** The minimum Node for node:sqlite without a flag. */
export const MIN_NODE = '22.13.0';

/**
 * `node:sqlite`'s DatabaseSync, or a StateDirError that names the Node version
 * needed and how to get it.
 */
export function sqliteModule() {
  try {
    return createRequire(import.meta.url)('node:sqlite');
  } catch (e) {
    throw new StateDirError(
      `kars-mesh keeps its state in SQLite through node:sqlite, which needs Node ${MIN_NODE} or newer; this is Node ${process.versions.node}. ` +
        'Install Node 24 (OpenClaw requires it too), or in a source checkout run `bash scripts/setup.sh`, which puts one in .cache/node24 ' +
        'that bin/kars-mesh uses by itself',
      { cause: e, code: 'KARS_MESH_NODE_VERSION' },
    );
  }
}

/** True when this Node has node:sqlite. */
export function hasSqlite() {
  try {
    createRequire(import.meta.url)('node:sqlite');
    return true;
  } catch {
    return false;
  }
}

/** Create `file` (0600) if it does not exist, so SQLite never creates it with the umask's mode. */
function touchPrivate(file) {
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY | (fs.constants.O_NOFOLLOW ?? 0), 0o600));
  } catch (e) {
    if (e.code !== 'EEXIST') throw e;
  }
  const st = fs.lstatSync(file);
  if (!st.isFile()) throw new StateDirError(`${file} is not a regular file (a link or a directory); move it aside`);
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
}

/**
 * Open the records database of a state directory without locking it (the
 * caller holds the lock), importing 0.1.0 record files first.
 */
export function openRecordsDb(dir, { sealedOnly = false, log = () => {} } = {}) {
  const { DatabaseSync } = sqliteModule();
  const root = path.resolve(dir);
  ensurePrivateDir(root, 'state directory');
  const file = path.join(root, DB_FILE);
  // Before anything is created or opened: SQLite would delete a WAL left
  // beside a missing or empty database (the records it holds with it).
  refuseKeyWithoutDatabase(root, file);
  let db;
  try {
    touchPrivate(file);
    db = new DatabaseSync(file);
    db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = FULL;
      PRAGMA busy_timeout = 5000;
      PRAGMA trusted_schema = OFF;
    `);
    db.exec(SCHEMA);
  } catch (e) {
    try { db?.close(); } catch { /* already failing */ }
    if (e instanceof StateDirError) throw e;
    const d = damaged(e, file);
    if (d !== e) throw d;
    throw new StateDirError(`cannot open the state database ${file}: ${e.message}. If the file is damaged, restore the directory from a backup`, { cause: e });
  }
  for (const suffix of ['-wal', '-shm']) {
    try { fs.chmodSync(file + suffix, 0o600); } catch { /* not there yet: SQLite gives it the database's mode */ }
  }
  let q;
  try {
    q = prepareRecords(db);
    // `format` is written when the database is new, before the state key can
    // exist (the key is loaded or made after the database is open), so a key
    // beside a database without it means the database was deleted or emptied.
    const format = q.meta.get('format')?.value;
    if (format !== undefined && format !== FORMAT) {
      throw new StateDirError(`the state database ${file} has format ${format}, which this kars-mesh does not know; use the kars-mesh that wrote it`);
    }
    importLegacy(root, db, q, { sealedOnly, log });
    if (format === undefined) {
      refuseKeyWithoutRecords(root, file, Number(q.count.get().n));
      q.setMeta.run('format', FORMAT);
    }
  } catch (e) {
    db.close();
    throw damaged(e, file);
  }

  return recordsApi(db, q, { sealedOnly, dir: root, file });
}

/** SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB. */
const DAMAGE_CODES = new Set([11, 26]);

/**
 * `e` as the state directory problem it is when SQLite found the file
 * damaged (a restart reads the same pages again, so "restart it" would be
 * wrong advice); any other error as it was.
 */
export function damaged(e, file) {
  if (e instanceof StateDirError || !(e?.code === 'ERR_SQLITE_ERROR' && DAMAGE_CODES.has(Number(e.errcode) & 0xff))) return e;
  return new StateDirError(
    `the state database ${file} is damaged (${e.message}); a restart reads the same damage. ` +
      'Stop kars-mesh and restore the state directory from a backup',
    // No `cause`: its text is in the message already (errorText would add it again).
    { code: 'KARS_MESH_STATE_DAMAGED' },
  );
}

/**
 * No database (or an empty file) beside an existing state key, and no 0.1.0
 * record files to import: the database was deleted or emptied. Refused
 * before SQLite touches the directory, so what is left (a `-wal` file)
 * stays for the restore. A first start that crashed never leaves this: the
 * database is written (WAL mode, page 1) before the key can exist.
 */
function refuseKeyWithoutDatabase(root, file) {
  let size;
  try {
    size = fs.statSync(file).size;
  } catch (e) {
    if (e.code !== 'ENOENT') return; // reported by the open, with its reason
    size = 0;
  }
  if (size > 0 || fs.existsSync(path.join(root, LEGACY_RECORDS))) return;
  refuseKeyWithoutRecords(root, file, 0);
}

/**
 * A new (or emptied) database with no records beside an existing state key:
 * the records that key sealed (identity, sessions, inbox) are gone, and
 * starting would make a new identity in their place without a word. Refused
 * as a missing key beside records is (storage-fs.js, loadStateKey).
 */
function refuseKeyWithoutRecords(root, file, recordCount) {
  if (recordCount > 0) return;
  const keyPath = path.join(root, 'state.key');
  try {
    fs.lstatSync(keyPath);
  } catch (e) {
    if (e.code === 'ENOENT') return;
    throw new StateDirError(`cannot check state key ${keyPath}: ${e.message}`, { cause: e });
  }
  throw new StateDirError(
    `the state database ${file} is missing or empty, but ${keyPath} exists: the identity, sessions and inbox sealed with that key are not there. ` +
      `Restore state.db (with state.db-wal, if there is one) from a backup, or move ${root} aside to start a new identity.`,
  );
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
`;

function prepareRecords(db) {
  return {
    get: db.prepare('SELECT value FROM records WHERE key = ?'),
    from: db.prepare('SELECT key FROM records WHERE key >= ? ORDER BY key'),
    put: db.prepare('INSERT INTO records (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
    del: db.prepare('DELETE FROM records WHERE key = ?'),
    count: db.prepare('SELECT count(*) AS n FROM records'),
    meta: db.prepare('SELECT value FROM meta WHERE name = ?'),
    setMeta: db.prepare('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value'),
  };
}

/**
 * The records API over an open database (one for a state directory, one in
 * memory for the engine's warm-up: the same code, so what V8 learns from the
 * one serves the other).
 */
function recordsApi(db, q, { sealedOnly, dir, file }) {
  let inBatch = false;
  let closed = false;
  // Every statement through one guard: SQLite finding the file damaged is
  // the state directory problem it is (`damaged`), wherever it is met.
  // (Two fixed parameters, not a rest array: `get` runs many times a batch.)
  const guard = (fn) => (a, b) => {
    try {
      return fn(a, b);
    } catch (e) {
      throw damaged(e, file);
    }
  };
  const count = guard(() => Number(q.count.get().n));
  const row = guard((key) => q.get.get(key));
  const keysFrom = guard((prefix) => {
    const out = [];
    for (const r of q.from.iterate(prefix)) {
      if (!r.key.startsWith(prefix)) break;
      out.push(r.key);
    }
    return out;
  });
  const put = guard((key, bytes) => q.put.run(key, bytes));
  const del = guard((key) => q.del.run(key));
  const exec = guard((sql) => db.exec(sql));
  return {
    dir,
    file,
    /** Number of records (used to refuse creating a new state key over old records). */
    get size() {
      return count();
    },
    /** Uint8Array or undefined; sees this connection's uncommitted writes. */
    get(key) {
      return row(key)?.value;
    },
    /** Sorted keys starting with `prefix` (an index range scan, stopped at the first key past it). */
    list(prefix = '') {
      return keysFrom(prefix);
    },
    set(key, bytes) {
      checkRecord(key, bytes, sealedOnly);
      put(key, bytes);
    },
    delete(key) {
      checkKey(key);
      del(key);
    },
    /** Start a batch: writes land together at commit(). */
    begin() {
      if (inBatch) return;
      exec('BEGIN IMMEDIATE');
      inBatch = true;
    },
    /** Make the batch durable (one WAL fsync). */
    commit() {
      if (!inBatch) return;
      exec('COMMIT');
      inBatch = false;
    },
    /** Drop the batch (only after a failure: nothing of it may count). */
    rollback() {
      if (!inBatch) return;
      inBatch = false;
      try { db.exec('ROLLBACK'); } catch { /* a failed COMMIT may already have rolled back */ }
    },
    get inBatch() {
      return inBatch;
    },
    close() {
      if (closed) return;
      closed = true;
      if (inBatch) this.rollback();
      try {
        db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
      } catch { /* checkpointing is an optimisation */ }
      db.close();
    },
  };
}

/**
 * A records database in memory, with the API of openRecordsDb: the engine's
 * warm-up (js-host/warm-up.js) runs its throwaway pair on it, so the node's
 * own store code is warm too. Nothing of it reaches the disk.
 */
export function openMemoryRecordsDb({ sealedOnly = true } = {}) {
  const { DatabaseSync } = sqliteModule();
  const db = new DatabaseSync(':memory:');
  db.exec(SCHEMA);
  return recordsApi(db, prepareRecords(db), { sealedOnly, dir: null, file: ':memory:' });
}

/**
 * 0.1.0 records (one file each under records/) into the database. Imported in
 * one transaction, verified byte for byte after the commit, then the files
 * are removed. A database that already holds the import only removes files
 * that a crash left behind.
 */
function importLegacy(root, db, q, { sealedOnly, log }) {
  const recDir = path.join(root, LEGACY_RECORDS);
  if (!fs.existsSync(recDir)) return;
  const done = q.meta.get('imported_0_1_0');
  if (!done) {
    const old = openRecords(root); // indexes the files; clears temp files of a crashed write
    const keys = old.list('');
    db.exec('BEGIN IMMEDIATE');
    try {
      for (const key of keys) {
        const bytes = old.get(key);
        if (bytes === undefined) continue;
        const why = sealedOnly ? notSealedReason(bytes, key) : undefined;
        if (why) {
          throw new StateDirError(
            `cannot import record ${JSON.stringify(key)} of kars-mesh 0.1.0 from ${recDir}: it is not a sealed record (${why}). ` +
              `Nothing was changed; move ${recDir} aside if it is not a kars-mesh state directory`,
          );
        }
        q.put.run(key, bytes);
      }
      q.setMeta.run('imported_0_1_0', JSON.stringify({ records: keys.length, at: new Date().toISOString() }));
      db.exec('COMMIT');
    } catch (e) {
      try { db.exec('ROLLBACK'); } catch { /* nothing to undo */ }
      if (e instanceof StateDirError) throw e;
      throw new StateDirError(`cannot import the 0.1.0 records of ${root}: ${e.message}; nothing was changed, the old files are kept`, { cause: e });
    }
    // Verified from the committed database before a single old file goes.
    for (const key of keys) {
      const want = old.get(key);
      const got = q.get.get(key)?.value;
      if (want !== undefined && (!got || Buffer.compare(Buffer.from(want), Buffer.from(got)) !== 0)) {
        throw new StateDirError(`the import of ${root}'s 0.1.0 records did not verify (record ${JSON.stringify(key)} differs); the old files are kept. Report this`);
      }
    }
    log('info', `host: imported ${keys.length} record(s) of kars-mesh 0.1.0 into ${DB_FILE}`);
  }
  // Committed and verified: the old files are a stale copy of sealed secrets.
  const aside = path.join(root, `.records-imported-${process.pid}`);
  fs.renameSync(recDir, aside);
  fs.rmSync(aside, { recursive: true, force: true });
  fsyncDir(root);
}

/**
 * Open a state directory for one process: creates it (0700), takes the
 * single-instance lock, opens (and if needed imports into) the database.
 * `stateKey()` loads or creates the sealing key; `close()` closes the
 * database and releases the lock.
 */
export function openStateDir(dir, { sealedOnly = false, log } = {}) {
  if (!dir || typeof dir !== 'string') throw new StateDirError('no state directory given');
  sqliteModule(); // the Node version first: before anything is created or locked
  return openLocked(dir, (root) => openRecordsDb(root, { sealedOnly, log }));
}
