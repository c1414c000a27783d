// What the console keeps in this browser besides the identity's records, as
// the page sees it: received files (offload outputs, `files`) and files picked
// for an offload (`inputs`), with their sizes, and removing them. The page
// opens the identity's database itself (storage-idb.js names it), so this works
// when the engine is stopped too, which is when it is needed most: a full
// quota stops the engine, and removing these is how the user makes room.
//
//   const list = await storedFiles('default');   // [{store, path, size}]
//   await removeStored('default', 'files', path);

import { dbName } from './storage-idb.js';

const STORES = ['files', 'inputs'];

function open(profile) {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(dbName(profile));
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    // A database never made here (no identity yet): nothing is kept.
    r.onupgradeneeded = () => r.transaction.abort();
  });
}

const done = (tx) =>
  new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error('the browser database refused the change'));
  });

/** Every received or picked file of this profile: [{store: 'files'|'inputs', path, size}], largest first. */
export async function storedFiles(profile) {
  let db;
  try {
    db = await open(profile);
  } catch (e) {
    if (e?.name === 'AbortError') return [];
    throw e;
  }
  try {
    const out = [];
    const tx = db.transaction(STORES, 'readonly');
    await Promise.all(
      STORES.map(
        (s) =>
          new Promise((resolve, reject) => {
            // A cursor, not getAll: the values are Blobs, and only their sizes are read.
            const r = tx.objectStore(s).openCursor();
            r.onsuccess = () => {
              const c = r.result;
              if (!c) return resolve();
              out.push({ store: s, path: String(c.key), size: c.value?.size ?? 0 });
              c.continue();
            };
            r.onerror = () => reject(r.error);
          }),
      ),
    );
    return out.sort((a, b) => b.size - a.size);
  } finally {
    db.close();
  }
}

/** Remove one received (`files`) or picked (`inputs`) file. */
export async function removeStored(profile, store, path) {
  if (!STORES.includes(store)) throw new Error(`no such store ${store}`);
  const db = await open(profile);
  try {
    const tx = db.transaction([store], 'readwrite');
    const finished = done(tx);
    tx.objectStore(store).delete(path);
    await finished;
  } finally {
    db.close();
  }
}
