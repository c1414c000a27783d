// What the console keeps in this browser besides the identity's records, as
// the page sees it: received files (offload outputs, `files`) and files picked
// for an offload (`inputs`), with their sizes, and removing them. The page
// opens the identity's database itself (storage-idb.js names it), so this works
// when the engine is stopped too, which is when it is needed most: a full
// quota stops the engine, and removing these is how the user makes room.
//
//   const list = await storedFiles('default');   // [{store, path, size}]
//   const same = await storedFilesApart('default'); // read in a Worker ended after
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

/** How long `storedFilesApart` waits for its Worker. */
const APART_TIMEOUT_MS = 15_000;

/**
 * `storedFiles`, read in a Worker that is ended right after
 * (stored-files-worker.js says why: the Blobs that reading sizes makes would
 * otherwise keep removed files' space taken until the page's next garbage
 * collection). Where that Worker cannot start, the page reads them itself.
 */
export async function storedFilesApart(profile) {
  let worker;
  try {
    worker = new Worker(new URL('./stored-files-worker.js', import.meta.url), { type: 'module', name: 'kars-mesh stored files' });
  } catch {
    return storedFiles(profile);
  }
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`listing the stored files took over ${APART_TIMEOUT_MS / 1000} s`)), APART_TIMEOUT_MS);
      worker.onmessage = ({ data }) => {
        clearTimeout(timer);
        if (data?.error) reject(Object.assign(new Error(data.error.message), { name: data.error.name }));
        else resolve(data?.files ?? []);
      };
      worker.onerror = (ev) => {
        ev.preventDefault?.();
        // The Worker did not load (a browser without module Workers): read
        // here, said in the browser's console, as removed files' space may
        // then come back only at the page's next garbage collection.
        console.warn(`kars-mesh: listing stored files in the page (${ev.message || 'its Worker did not load'}); removed files' space may come back later`);
        storedFiles(profile).then(
          (files) => { clearTimeout(timer); resolve(files); },
          (e) => { clearTimeout(timer); reject(e); },
        );
      };
      worker.onmessageerror = () => {
        clearTimeout(timer);
        reject(new Error('the stored files list could not be read from its Worker'));
      };
      worker.postMessage({ profile });
    });
  } finally {
    worker.terminate();
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
