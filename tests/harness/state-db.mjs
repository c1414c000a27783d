// Tests: read (and, to simulate tampering, write) the records of a state
// directory's database (js-host/state-db.js) from outside the node, the way
// the older tests read record files.
import path from 'node:path';
import fs from 'node:fs';
import { DatabaseSync } from 'node:sqlite';

export const dbFile = (stateDir) => path.join(stateDir, 'state.db');

function open(stateDir, readOnly = true) {
  const file = dbFile(stateDir);
  if (!fs.existsSync(file)) throw new Error(`no state database in ${stateDir}`);
  const db = new DatabaseSync(file, { readOnly });
  db.exec('PRAGMA busy_timeout = 5000');
  return db;
}

/** The stored bytes of `key` (a Buffer), or undefined. */
export function readRecord(stateDir, key) {
  const db = open(stateDir);
  try {
    const row = db.prepare('SELECT value FROM records WHERE key = ?').get(key);
    return row ? Buffer.from(row.value) : undefined;
  } finally {
    db.close();
  }
}

/** Sorted keys under `prefix`. */
export function recordKeys(stateDir, prefix = '') {
  const db = open(stateDir);
  try {
    return db.prepare('SELECT key FROM records ORDER BY key').all().map((r) => r.key).filter((k) => k.startsWith(prefix));
  } finally {
    db.close();
  }
}

/** Every record: [[key, Buffer]], sorted by key. */
export function allRecords(stateDir) {
  const db = open(stateDir);
  try {
    return db.prepare('SELECT key, value FROM records ORDER BY key').all().map((r) => [r.key, Buffer.from(r.value)]);
  } finally {
    db.close();
  }
}

/** Overwrite (or with undefined, delete) one record, as an attacker with disk access would. */
export function writeRecord(stateDir, key, bytes) {
  const db = open(stateDir, false);
  try {
    if (bytes === undefined) db.prepare('DELETE FROM records WHERE key = ?').run(key);
    else db.prepare('INSERT INTO records (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, bytes);
  } finally {
    db.close();
  }
}
