// The browser host's state: one IndexedDB database per identity (profile) of
// this origin, the counterpart of js-host/state-db.js.
//
//   kars-mesh:<profile>       database
//     records   key -> Uint8Array   every value a record sealed by the core
//     meta      'state_key' -> Uint8Array(32), 'format' -> '1'
//     files     rel path -> Blob     received files (`file-write`: offload outputs)
//     inputs    path -> File/Blob    files the user picked for cloud_offload
//
//   const store = await openIdbStore('default');
//   store.get(key) / store.list(prefix)      synchronous reads (the core's imports)
//   store.begin(); store.set(k, v); ...      writes of one batch (event-loop.js)
//   await store.commit()                     one readwrite transaction, durability 'strict'
//
// The core's storage imports are synchronous and IndexedDB is not, so every
// record is read into memory when the database opens, and reads are served
// from there (they see the batch's uncommitted writes, as SQLite's do). Writes
// go to memory at once and to the database at commit(): one transaction per
// batch, whose promise the event loop waits for before anything of the batch
// leaves the Worker (js-host/ENGINE.md, group commit). A file-write joins the
// next transaction, after the records before it (IndexedDB runs readwrite
// transactions on the same stores in the order they were created).
//
// The state key (32 random bytes) is kept in the same database, in `meta`: see
// docs/design/BROWSER.md for what that protects and what it does not.

import { StateDirError } from '../node-error.js';
import { checkKey, checkRecord } from '../sealed.js';

const DB_VERSION = 1;
const FORMAT = '1';
const STATE_KEY_LEN = 32;

export const dbName = (profile) => `kars-mesh:${profile}`;

const request = (r) =>
  new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });

const transactionDone = (tx) =>
  new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new DOMException('the transaction was aborted', 'AbortError'));
  });

/** A storage failure as the user should read it; a full quota says so plainly. */
export function storageError(e, what) {
  const name = e?.name ?? '';
  const inner = e?.inner ?? e;
  if (name === 'QuotaExceededError' || inner?.name === 'QuotaExceededError' || /quota/i.test(e?.message ?? '')) {
    const err = new StateDirError(
      `${what}: the browser's storage for this console is full (quota exceeded); nothing of it was kept. ` +
        'Free space (remove received or picked files in the console, or other data of this site in the browser\'s settings) and reload the page',
      { cause: e, code: 'KARS_MESH_QUOTA' },
    );
    return err;
  }
  return new StateDirError(`${what}: ${e?.message ?? e}`, { cause: e, code: 'KARS_MESH_STORE' });
}

function openDb(name) {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(name, DB_VERSION);
    r.onupgradeneeded = () => {
      const db = r.result;
      for (const s of ['records', 'meta', 'files', 'inputs']) if (!db.objectStoreNames.contains(s)) db.createObjectStore(s);
    };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.onblocked = () => reject(new StateDirError('the browser database of this identity is being upgraded by another tab; close the other tabs of this console and reload'));
  });
}

/** Index of the first element of sorted `arr` that is >= key. */
function lowerBound(arr, key) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}


/** A received file's path as the core chose it: relative, no empty, `.` or `..` part. */
function checkRel(rel) {
  if (typeof rel !== 'string' || !rel || rel.startsWith('/') || rel.includes('\\') || rel.split('/').some((p) => !p || p === '.' || p === '..')) {
    throw new Error(`refusing a file path outside the files store: ${JSON.stringify(rel)}`);
  }
}

/**
 * Open (creating) the database of a profile and read its records and state key.
 * @param {string} profile
 * @param {{ sealedOnly?: boolean }} [o]  `set` refuses records that are not sealed (always with the real core)
 */
export async function openIdbStore(profile, { sealedOnly = true } = {}) {
  const name = dbName(profile);
  let db;
  try {
    db = await openDb(name);
  } catch (e) {
    if (e instanceof StateDirError) throw e;
    throw storageError(e, `cannot open the browser database ${name}`);
  }
  const mem = new Map();
  let keys;
  let stateKey;
  try {
    const tx = db.transaction(['records', 'meta'], 'readonly');
    const [allKeys, allValues, key, format] = await Promise.all([
      request(tx.objectStore('records').getAllKeys()),
      request(tx.objectStore('records').getAll()),
      request(tx.objectStore('meta').get('state_key')),
      request(tx.objectStore('meta').get('format')),
    ]);
    if (format !== undefined && format !== FORMAT) {
      throw new StateDirError(`the browser database ${name} has format ${format}, which this kars-mesh console does not know; use the kars-mesh that wrote it`);
    }
    keys = allKeys.map(String);
    for (let i = 0; i < keys.length; i++) mem.set(keys[i], new Uint8Array(allValues[i]));
    keys.sort();
    if (key !== undefined) {
      stateKey = new Uint8Array(key);
      if (stateKey.length !== STATE_KEY_LEN) {
        throw new StateDirError(`the state key in the browser database ${name} is ${stateKey.length} bytes, not ${STATE_KEY_LEN}; it is damaged, and the records sealed with it cannot be opened`);
      }
    } else if (keys.length) {
      throw new StateDirError(
        `the browser database ${name} holds ${keys.length} record(s) but no state key; they cannot be opened without it, and a new key is not made over them. ` +
          'Remove this profile\'s data (browser settings: site data for this origin) to start a new identity',
      );
    } else {
      stateKey = crypto.getRandomValues(new Uint8Array(STATE_KEY_LEN));
      const wtx = db.transaction(['meta'], 'readwrite', { durability: 'strict' });
      const done = transactionDone(wtx);
      wtx.objectStore('meta').put(stateKey.slice(), 'state_key');
      wtx.objectStore('meta').put(FORMAT, 'format');
      wtx.commit?.();
      await done;
    }
  } catch (e) {
    db.close();
    if (e instanceof StateDirError) throw e;
    throw storageError(e, `cannot read the browser database ${name}`);
  }

  /** key -> { value: Uint8Array | undefined (erased) } of the open batch, and what memory held before it. */
  let pending = new Map();
  let prevOf = new Map();
  /** rel -> Blob | undefined (erased) of the open batch. */
  let pendingFiles = new Map();
  let inBatch = false;
  let closed = false;

  function remember(key) {
    if (!prevOf.has(key)) prevOf.set(key, mem.get(key));
  }
  function memSet(key, value) {
    if (value === undefined) {
      if (mem.delete(key)) {
        const i = lowerBound(keys, key);
        if (keys[i] === key) keys.splice(i, 1);
      }
    } else {
      if (!mem.has(key)) keys.splice(lowerBound(keys, key), 0, key);
      mem.set(key, value);
    }
  }

  const store = {
    name,
    get size() {
      return mem.size;
    },
    get inBatch() {
      return inBatch;
    },
    /** The state key, handed out once per call as a fresh copy (the worker hands it to the core). */
    stateKey() {
      return stateKey.slice();
    },
    get(key) {
      return mem.get(key);
    },
    list(prefix = '') {
      const out = [];
      for (let i = lowerBound(keys, prefix); i < keys.length && keys[i].startsWith(prefix); i++) out.push(keys[i]);
      return out;
    },
    begin() {
      inBatch = true;
    },
    set(key, bytes) {
      checkRecord(key, bytes, sealedOnly);
      inBatch = true;
      remember(key);
      memSet(key, bytes);
      pending.set(key, bytes);
    },
    delete(key) {
      checkKey(key);
      inBatch = true;
      remember(key);
      memSet(key, undefined);
      pending.set(key, undefined);
    },
    /** A received file, written with the next commit (after every record before it). */
    putFile(rel, bytes) {
      checkRel(rel);
      inBatch = true;
      pendingFiles.set(rel, new Blob([bytes]));
    },
    /**
     * One readwrite transaction for the batch's records and files, durability
     * 'strict' (flushed to disk before it completes). A promise: the event
     * loop carries out the batch's outbox once it resolves.
     */
    commit() {
      if (!inBatch) return undefined;
      inBatch = false;
      const recs = pending;
      const files = pendingFiles;
      pending = new Map();
      pendingFiles = new Map();
      prevOf = new Map();
      if (closed) return Promise.reject(new StateDirError('the browser database is closed'));
      let tx;
      try {
        tx = db.transaction(['records', 'files'], 'readwrite', { durability: 'strict' });
      } catch (e) {
        return Promise.reject(storageError(e, 'cannot write the state records'));
      }
      const done = transactionDone(tx);
      try {
        const r = tx.objectStore('records');
        for (const [k, v] of recs) {
          if (v === undefined) r.delete(k);
          else r.put(v, k);
        }
        const f = tx.objectStore('files');
        for (const [k, v] of files) {
          if (v === undefined) f.delete(k);
          else f.put(v, k);
        }
        tx.commit?.();
      } catch (e) {
        try { tx.abort(); } catch { /* already aborting */ }
        done.catch(() => {});
        return Promise.reject(storageError(e, 'cannot write the state records'));
      }
      return done.catch((e) => {
        throw storageError(e, 'cannot write the state records');
      });
    },
    /** Drop the open batch (only after a failure: nothing of it may count). */
    rollback() {
      for (const [k, v] of prevOf) memSet(k, v);
      pending = new Map();
      prevOf = new Map();
      pendingFiles = new Map();
      inBatch = false;
    },

    // ----------------------------------------------------- files and inputs
    /** A received file as a Blob, or undefined. */
    async getFile(rel) {
      checkRel(rel);
      return request(db.transaction(['files'], 'readonly').objectStore('files').get(rel));
    },
    /** Remove a received file or a tree of them (`file-erase`). */
    async eraseFiles(rel) {
      checkRel(rel);
      const tx = db.transaction(['files'], 'readwrite');
      const done = transactionDone(tx);
      const f = tx.objectStore('files');
      f.delete(rel);
      f.delete(IDBKeyRange.bound(`${rel}/`, `${rel}/\uffff`));
      await done;
    },
    /** Every received file: [{path, size}]. */
    async listFiles() {
      const tx = db.transaction(['files'], 'readonly');
      const [k, v] = await Promise.all([request(tx.objectStore('files').getAllKeys()), request(tx.objectStore('files').getAll())]);
      return k.map((path, i) => ({ path: String(path), size: v[i]?.size ?? 0 }));
    },
    /** Keep picked files under the given paths (durable before the call returns). */
    async putInputs(entries) {
      const tx = db.transaction(['inputs'], 'readwrite', { durability: 'strict' });
      const done = transactionDone(tx);
      for (const [path, blob] of entries) tx.objectStore('inputs').put(blob, path);
      tx.commit?.();
      try {
        await done;
      } catch (e) {
        throw storageError(e, 'cannot keep the picked files');
      }
    },
    async getInput(path) {
      return request(db.transaction(['inputs'], 'readonly').objectStore('inputs').get(path));
    },
    async listInputs() {
      return (await request(db.transaction(['inputs'], 'readonly').objectStore('inputs').getAllKeys())).map(String);
    },
    async eraseInputs(paths) {
      const tx = db.transaction(['inputs'], 'readwrite');
      const done = transactionDone(tx);
      for (const p of paths) tx.objectStore('inputs').delete(p);
      await done;
    },
    close() {
      closed = true;
      db.close();
    },
  };
  return store;
}
