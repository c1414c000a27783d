// Lists the console's stored files (stored-files.js `storedFiles`) in a Worker
// of its own, which the page ends right after: reading a file's size from
// IndexedDB makes a Blob of it, and Chromium keeps a deleted file's space until
// every Blob made of it is garbage collected. In the page that took from about
// 30 s to past two minutes after the file was removed, while the quota notice
// waited for the space to come back; a Worker that ends drops its Blobs at once.
//
//   page → {profile}   worker → {files} | {error: {name, message}}

import { storedFiles } from './stored-files.js';

self.onmessage = async ({ data }) => {
  try {
    self.postMessage({ files: await storedFiles(data?.profile) });
  } catch (e) {
    self.postMessage({ error: { name: e?.name ?? 'Error', message: e?.message ?? String(e) } });
  }
};
