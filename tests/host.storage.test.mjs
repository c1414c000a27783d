// js-host/storage-fs.js: durable records, modes, key escaping, the state key
// and the single-instance lock. The file-per-record store is 0.1.0's layout,
// still read when a 0.1.0 state directory is imported; the records of a node
// live in js-host/state-db.js, whose own checks of the same properties
// follow the lock's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import {
  openStateDir,
  openRecords,
  encodeKey,
  decodeKey,
  loadStateKey,
  acquireLock,
  StateDirError,
} from '../js-host/storage-fs.js';
import { openStateDir as openStateDb } from '../js-host/state-db.js';
import { MAX_KEY_BYTES } from '../js-host/sealed.js';

const posix = process.platform !== 'win32';

function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-storage-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const mode = (p) => fs.statSync(p).mode & 0o777;
const bytes = (s) => new Uint8Array(Buffer.from(s));

/** The pid the lock file names (its first line; the second is the holder's start time). */
const lockPid = (dir) => fs.readFileSync(path.join(dir, 'lock'), 'utf8').split('\n')[0];

/** /proc's start time of a pid (field 22 of /proc/PID/stat). */
const startTime = (pid) => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
};

/**
 * A zombie nobody reaps, as a SIGKILLed node becomes in a container without an
 * init: a Python parent forks a child that exits at once and never waits for
 * it (a shell would reap its background job). Resolves to the child's pid.
 */
async function zombie(t) {
  const code = 'import os,sys,time\npid=os.fork()\nif pid==0: os._exit(0)\nprint(pid,flush=True)\ntime.sleep(30)';
  const parent = spawn('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.after(() => parent.kill('SIGKILL'));
  const pid = await new Promise((resolve, reject) => {
    parent.stdout.once('data', (d) => resolve(Number(String(d).trim())));
    parent.once('exit', (c) => reject(new Error(`the zombie's parent exited (${c})`)));
  });
  for (let i = 0; i < 250; i++) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return pid;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`pid ${pid} did not become a zombie`);
}

/** A pid that is certainly not running: a child that has already exited. */
function deadPid() {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

test('set/get/delete round-trip, durable rename, no temp files left behind', (t) => {
  const dir = tmpDir(t);
  const s = openStateDir(path.join(dir, 'state'));
  t.after(() => s.close());
  assert.equal(s.get('identity'), undefined);
  s.set('identity', bytes('one'));
  assert.deepEqual(Buffer.from(s.get('identity')), Buffer.from('one'));
  assert.ok(s.get('identity') instanceof Uint8Array);

  const file = path.join(s.recordsDir, 'identity');
  const inoBefore = fs.statSync(file).ino;
  s.set('identity', bytes('two'));
  assert.equal(fs.readFileSync(file, 'utf8'), 'two');
  assert.notEqual(fs.statSync(file).ino, inoBefore, 'an overwrite is a rename of a new file, not an in-place write');
  assert.deepEqual(fs.readdirSync(s.recordsDir), ['identity'], 'no temp files remain');

  s.set('empty', new Uint8Array(0));
  assert.equal(s.get('empty').byteLength, 0);

  s.delete('identity');
  assert.equal(s.get('identity'), undefined);
  assert.equal(fs.existsSync(file), false);
  s.delete('never-existed'); // fine
  assert.deepEqual(s.list(''), ['empty']);
});

test('a crash between temp write and rename leaves the old record; the temp file is cleaned up', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  s.set('sessions/a', bytes('old'));
  // Simulate the crash: a fully written temp file that was never renamed.
  fs.writeFileSync(path.join(s.recordsDir, '.tmp-12345-deadbeef0000'), 'new', { mode: 0o600 });
  s.close();
  const again = openStateDir(dir);
  t.after(() => again.close());
  assert.equal(Buffer.from(again.get('sessions/a')).toString(), 'old');
  assert.deepEqual(again.list(''), ['sessions/a']);
  assert.deepEqual(fs.readdirSync(again.recordsDir), [encodeKey('sessions/a')]);
});

test('modes: state directory and records 0700, files 0600, even with umask 0', { skip: !posix }, (t) => {
  const old = process.umask(0);
  t.after(() => process.umask(old));
  const dir = path.join(tmpDir(t), 'a', 'state');
  const s = openStateDir(dir);
  t.after(() => s.close());
  s.stateKey();
  s.set('inbox/1', bytes('x'));
  assert.equal(mode(dir), 0o700);
  assert.equal(mode(s.recordsDir), 0o700);
  assert.equal(mode(path.join(s.recordsDir, encodeKey('inbox/1'))), 0o600);
  assert.equal(mode(path.join(dir, 'state.key')), 0o600);
  assert.equal(mode(path.join(dir, 'lock')), 0o600);
});

test('an existing group/other-accessible state directory we own is made private', { skip: !posix }, (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o755 });
  fs.chmodSync(dir, 0o755);
  const s = openStateDir(dir);
  t.after(() => s.close());
  assert.equal(mode(dir), 0o700);
});

test('key escaping is reversible, file-name safe and case-insensitive safe', () => {
  const keys = [
    '', '.', '..', '...', '.hidden', 'identity', 'a/b', 'a%2Fb', '%', '%%', 'A', 'a', 'Aa', 'aA',
    'sessions/did:mesh:0123abcd', 'inbox/2026-01-01T00:00:00Z/1', 'ünïcødé/🙂', 'with space', '\\back', 'x\0y', '.tmp-1-2',
  ];
  const names = new Set();
  const folded = new Set();
  for (const k of keys) {
    const n = encodeKey(k);
    assert.equal(decodeKey(n), k, `round-trip of ${JSON.stringify(k)}`);
    assert.ok(!n.includes('/') && !n.includes('\\') && !n.includes('\0'), `no separators in ${n}`);
    assert.ok(n !== '.' && n !== '..' && !n.startsWith('.'), `not hidden/special: ${n}`);
    assert.ok(Buffer.byteLength(n) <= 255);
    names.add(n);
    folded.add(n.toLowerCase());
  }
  assert.equal(names.size, keys.length, 'distinct keys, distinct names');
  assert.equal(folded.size, keys.length, 'distinct even on a case-insensitive file system');
  assert.equal(encodeKey('a/b'), 'a%2Fb');
  assert.equal(encodeKey('%'), '%25');
  // Names this module never writes are not mistaken for records.
  for (const foreign of ['.tmp-1-abc', 'Upper', 'a%2fb', '%zz', 'x%', '.dot', '%61', '%FF']) {
    assert.equal(decodeKey(foreign), undefined, foreign);
  }
});

test('list(prefix) returns sorted original keys and survives a reopen', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  const keys = ['sessions/did:mesh:b', 'sessions/did:mesh:a', 'sessionsX', 'inbox/002', 'inbox/001', 'identity', 'Sessions/upper'];
  for (const k of keys) s.set(k, bytes(k));
  assert.deepEqual(s.list('sessions/'), ['sessions/did:mesh:a', 'sessions/did:mesh:b']);
  assert.deepEqual(s.list('sessions'), ['sessions/did:mesh:a', 'sessions/did:mesh:b', 'sessionsX']);
  assert.deepEqual(s.list('inbox/'), ['inbox/001', 'inbox/002']);
  assert.deepEqual(s.list(''), [...keys].sort());
  assert.deepEqual(s.list('nothing'), []);
  s.delete('inbox/001');
  s.close();
  // A stray file that is not an encoded key is ignored.
  fs.writeFileSync(path.join(dir, 'records', 'README'), 'x');
  const again = openStateDir(dir);
  t.after(() => again.close());
  assert.deepEqual(again.list('inbox/'), ['inbox/002']);
  assert.equal(Buffer.from(again.get('sessions/did:mesh:b')).toString(), 'sessions/did:mesh:b');
  assert.equal(again.get('README'), undefined);
});

test('over-long keys are refused without touching disk', (t) => {
  const s = openStateDir(path.join(tmpDir(t), 'state'));
  t.after(() => s.close());
  assert.throws(() => s.set('k/'.repeat(200), bytes('x')), /too long/);
  assert.deepEqual(s.list(''), []);
});

test('state.key: created once (32 bytes, 0600), then reused', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  const k1 = s.stateKey();
  assert.equal(k1.byteLength, 32);
  assert.ok(k1.some((b) => b !== 0));
  if (posix) assert.equal(mode(path.join(dir, 'state.key')), 0o600);
  assert.deepEqual(Buffer.from(s.stateKey()), Buffer.from(k1));
  s.close();
  const again = openStateDir(dir);
  t.after(() => again.close());
  assert.deepEqual(Buffer.from(again.stateKey()), Buffer.from(k1));
  assert.deepEqual(fs.readdirSync(dir).sort(), ['lock', 'records', 'state.key'], 'no temp files remain');
});

test('state.key: refused when the wrong size', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  fs.writeFileSync(path.join(dir, 'state.key'), Buffer.alloc(31, 1), { mode: 0o600 });
  assert.throws(() => loadStateKey(dir), (e) => e instanceof StateDirError && /is 31 bytes, expected 32/.test(e.message));
  fs.writeFileSync(path.join(dir, 'state.key'), Buffer.alloc(0));
  assert.throws(() => loadStateKey(dir), /is 0 bytes/);
});

test('state.key: refused when readable by group or others', { skip: !posix }, (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const file = path.join(dir, 'state.key');
  fs.writeFileSync(file, Buffer.alloc(32, 1));
  for (const m of [0o640, 0o604, 0o644]) {
    fs.chmodSync(file, m);
    assert.throws(
      () => loadStateKey(dir),
      (e) => e instanceof StateDirError && e.message.includes('readable by group/others') && e.message.includes('chmod 600'),
    );
  }
  fs.chmodSync(file, 0o600);
  assert.equal(loadStateKey(dir).byteLength, 32);
});

test('state.key: a symlink is refused', { skip: !posix }, (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const target = path.join(dir, 'elsewhere');
  fs.writeFileSync(target, Buffer.alloc(32, 1), { mode: 0o600 });
  fs.symlinkSync(target, path.join(dir, 'state.key'));
  assert.throws(() => loadStateKey(dir), /symbolic link/);
});

test('state.key: not silently recreated when sealed records exist', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  s.stateKey();
  s.set('identity', bytes('sealed'));
  fs.unlinkSync(path.join(dir, 'state.key'));
  assert.throws(() => s.stateKey(), (e) => e instanceof StateDirError && /missing, but .* holds 1 record/.test(e.message));
  assert.equal(fs.existsSync(path.join(dir, 'state.key')), false);
  s.close();
});

test('lock: a second open while the first holds it is refused with the pid', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  assert.equal(lockPid(dir), String(process.pid));
  if (posix) assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8'), `${process.pid}\n${startTime(process.pid)}\n`);
  assert.throws(
    () => openStateDir(dir),
    (e) =>
      e instanceof StateDirError &&
      e.message.startsWith(
        `state directory ${dir} is in use by process ${process.pid} (one process per identity: the relay allows one connection per agent)`,
      ),
  );
  s.close();
  assert.equal(fs.existsSync(path.join(dir, 'lock')), false, 'close releases the lock');
  openStateDir(dir).close();
});

test('lock: copies of the module loaded afresh (a plugin host reloading) share one exit hook and see each other\'s locks', async (t) => {
  // OpenClaw loads the plugin again on each config reload; each copy of
  // storage-fs.js used to add its own process exit hook, and a lock that
  // one copy held looked stale to the next, which took it over.
  const base = new URL('../js-host/storage-fs.js', import.meta.url).href;
  const copies = await Promise.all([1, 2, 3].map((n) => import(`${base}?reload=${n}-${process.pid}`)));
  const dirs = copies.map((_, i) => path.join(tmpDir(t), `state-${i}`));
  const before = process.listenerCount('exit');
  const locks = copies.map((m, i) => {
    fs.mkdirSync(dirs[i], { mode: 0o700 });
    return m.acquireLock(dirs[i]);
  });
  assert.ok(process.listenerCount('exit') - before <= 1, `exit listeners added: ${process.listenerCount('exit') - before}`);
  assert.throws(() => copies[1].acquireLock(dirs[0]), new RegExp(`in use by process ${process.pid}`), 'a lock another copy holds is not stale');
  for (const l of locks) l.release();
  for (const d of dirs) assert.equal(fs.existsSync(path.join(d, 'lock')), false);
  copies[2].acquireLock(dirs[0]).release();
});

test('lock: a lock held by another live process is refused', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const live = process.ppid; // the test runner: alive for the whole test
  fs.writeFileSync(path.join(dir, 'lock'), `${live}\n`, { mode: 0o600 });
  assert.throws(() => openStateDir(dir), new RegExp(`in use by process ${live} \\(one process per identity`));
  assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8').trim(), String(live), 'a live lock is left alone');
});

test('lock: a stale lock (dead pid, garbage, our own pid from an earlier run) is taken over', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  for (const content of [`${deadPid()}\n`, 'garbage', '', `${process.pid}\n`]) {
    fs.writeFileSync(path.join(dir, 'lock'), content, { mode: 0o600 });
    const s = openStateDir(dir);
    assert.equal(lockPid(dir), String(process.pid), JSON.stringify(content));
    s.close();
    assert.equal(fs.existsSync(path.join(dir, 'lock')), false);
  }
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('lock') || n.startsWith('.tmp')), []);
});

test('lock: a live holder with its start time is refused; the same pid with another start time (reused) is taken over', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const live = process.ppid;
  fs.writeFileSync(path.join(dir, 'lock'), `${live}\n${startTime(live)}\n`, { mode: 0o600 });
  assert.throws(() => openStateDir(dir), new RegExp(`in use by process ${live} \\(one process per identity`));
  fs.writeFileSync(path.join(dir, 'lock'), `${live}\n${Number(startTime(live)) + 1}\n`, { mode: 0o600 });
  const s = openStateDir(dir);
  assert.equal(lockPid(dir), String(process.pid), 'a pid given to a later process holds nothing');
  s.close();
});

test('lock: a zombie holder (a SIGKILLed node nobody reaped) holds nothing', { skip: !posix }, async (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const pid = await zombie(t);
  for (const content of [`${pid}\n`, `${pid}\n${startTime(pid)}\n`]) {
    fs.writeFileSync(path.join(dir, 'lock'), content, { mode: 0o600 });
    const s = openStateDir(dir);
    assert.equal(lockPid(dir), String(process.pid), JSON.stringify(content));
    s.close();
  }
});

test('lock: release does not remove a lock that another process has taken since', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  fs.mkdirSync(dir, { mode: 0o700 });
  const lock = acquireLock(dir);
  fs.writeFileSync(path.join(dir, 'lock'), `${process.ppid}\n`);
  lock.release();
  assert.equal(fs.readFileSync(path.join(dir, 'lock'), 'utf8').trim(), String(process.ppid));
});

test('records without a lock (openRecords) share the same layout', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDir(dir);
  s.set('a/b', bytes('1'));
  s.close();
  const r = openRecords(dir);
  assert.deepEqual(r.list('a/'), ['a/b']);
});

// ── js-host/state-db.js: the store a node writes through ──

test('state-db: set/get/delete round-trip; a batch lands whole at commit or not at all; a reopen sees what was committed', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDb(dir);
  assert.equal(s.get('identity'), undefined);
  s.set('identity', bytes('one'));
  assert.ok(s.get('identity') instanceof Uint8Array);
  assert.equal(Buffer.from(s.get('identity')).toString(), 'one');
  s.set('identity', bytes('two'));
  s.set('empty', new Uint8Array(0));
  assert.equal(s.get('empty').byteLength, 0);
  s.delete('never-existed'); // fine

  s.begin();
  s.set('sessions/a', bytes('kept'));
  s.delete('empty');
  assert.equal(Buffer.from(s.get('sessions/a')).toString(), 'kept', 'a batch sees its own writes');
  s.commit();
  s.begin();
  s.set('sessions/b', bytes('dropped'));
  s.set('identity', bytes('dropped'));
  s.rollback();
  assert.equal(s.get('sessions/b'), undefined);
  s.close();

  const again = openStateDb(dir);
  t.after(() => again.close());
  assert.deepEqual(again.list(''), ['identity', 'sessions/a']);
  assert.equal(Buffer.from(again.get('identity')).toString(), 'two');
  assert.equal(Buffer.from(again.get('sessions/a')).toString(), 'kept');
});

test('state-db: list(prefix) is sorted and exact at the prefix edge (no LIKE wildcards), and survives a reopen', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDb(dir);
  const keys = ['sessions/did:mesh:b', 'sessions/did:mesh:a', 'sessionsX', 'inbox/002', 'inbox/001', 'identity', 'Sessions/upper', 'in%box/1', 'in_box/1', 'inbox0', 'peers/\u00fc'];
  for (const k of keys) s.set(k, bytes(k));
  assert.deepEqual(s.list('sessions/'), ['sessions/did:mesh:a', 'sessions/did:mesh:b']);
  assert.deepEqual(s.list('sessions'), ['sessions/did:mesh:a', 'sessions/did:mesh:b', 'sessionsX']);
  assert.deepEqual(s.list('inbox/'), ['inbox/001', 'inbox/002']);
  assert.deepEqual(s.list('in%'), ['in%box/1'], '% is not a wildcard');
  assert.deepEqual(s.list('in_'), ['in_box/1'], '_ is not a wildcard');
  assert.deepEqual(s.list('peers/'), ['peers/\u00fc']);
  assert.deepEqual(s.list(''), [...keys].sort());
  assert.deepEqual(s.list('nothing'), []);
  s.delete('inbox/001');
  s.close();
  const again = openStateDb(dir);
  t.after(() => again.close());
  assert.deepEqual(again.list('inbox/'), ['inbox/002']);
  assert.equal(Buffer.from(again.get('sessions/did:mesh:b')).toString(), 'sessions/did:mesh:b');
});

test('state-db: over-long keys and values that are not bytes are refused without a write', (t) => {
  const s = openStateDb(path.join(tmpDir(t), 'state'));
  t.after(() => s.close());
  const longest = 'k'.repeat(MAX_KEY_BYTES);
  s.set(longest, bytes('x'));
  s.delete(longest);
  assert.throws(() => s.set(`${longest}/`, bytes('x')), /too long/);
  assert.throws(() => s.set('\u00fc'.repeat(MAX_KEY_BYTES / 2 + 1), bytes('x')), /too long/, 'counted in UTF-8 bytes');
  assert.throws(() => s.set('k', 'a string'), /Uint8Array/);
  assert.throws(() => s.delete(`${longest}/`), /too long/);
  assert.deepEqual(s.list(''), []);
});

test('state-db: the database, its WAL and shared-memory files are 0600 and the directory 0700, even with umask 0', { skip: !posix }, (t) => {
  const old = process.umask(0);
  t.after(() => process.umask(old));
  const dir = path.join(tmpDir(t), 'a', 'state');
  const s = openStateDb(dir);
  t.after(() => s.close());
  s.stateKey();
  s.begin();
  s.set('inbox/1', bytes('x'));
  s.commit();
  // The WAL and shared-memory files exist while the database is open (a
  // clean close checkpoints the WAL away): each must be private.
  for (const f of ['state.db', 'state.db-wal', 'state.db-shm', 'state.key', 'lock']) {
    assert.equal(mode(path.join(dir, f)), 0o600, f);
  }
  assert.equal(mode(dir), 0o700);
});

test('state-db: a state key beside a deleted or emptied database is refused, not answered with a new identity; a key made just before a crash is not', (t) => {
  const dir = path.join(tmpDir(t), 'state');
  const s = openStateDb(dir);
  s.stateKey();
  s.set('identity', bytes('sealed'));
  s.close();
  const db = path.join(dir, 'state.db');
  const refused = (e) => {
    assert.ok(e instanceof StateDirError, String(e));
    assert.match(e.message, /state\.db is missing or empty, but .*state\.key exists: the identity, sessions and inbox sealed with that key are not there\. Restore state\.db .* from a backup, or move .* aside to start a new identity\./);
    return true;
  };
  for (const damage of [() => fs.rmSync(db), () => fs.writeFileSync(db, '')]) {
    damage();
    assert.throws(() => openStateDb(dir), refused);
    // Refused again on the next start: the refusal left no mark of a new database.
    assert.throws(() => openStateDb(dir), refused);
    assert.equal(fs.existsSync(path.join(dir, 'lock')), false, 'the refusal released the lock');
  }
  // A process killed with its records still in the WAL: the refusal leaves
  // the WAL as it was (SQLite deletes one beside an empty database), and
  // creates no database in its place.
  const walled = path.join(tmpDir(t), 'walled');
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', `
    import { openStateDir } from ${JSON.stringify(new URL('../js-host/state-db.js', import.meta.url).href)};
    const s = openStateDir(${JSON.stringify(walled)});
    s.stateKey();
    s.set('identity', new Uint8Array(4000).fill(7));
    process.exit(0); // no close: no checkpoint
  `], { encoding: 'utf8' });
  assert.equal(child.status, 0, child.stderr);
  const wal = path.join(walled, 'state.db-wal');
  const walSize = fs.statSync(wal).size;
  assert.ok(walSize > 4000, `the records are in the WAL (${walSize} bytes)`);
  fs.rmSync(path.join(walled, 'state.db'));
  fs.rmSync(path.join(walled, 'lock'), { force: true });
  assert.throws(() => openStateDb(walled), refused);
  assert.equal(fs.statSync(wal).size, walSize, 'the WAL is kept for the restore');
  assert.equal(fs.existsSync(path.join(walled, 'state.db')), false, 'no database made in its place');

  // A process killed after it made the key, before its first record: the
  // database was there first, so the next start goes on.
  const fresh = path.join(tmpDir(t), 'fresh');
  const f = openStateDb(fresh);
  f.stateKey();
  f.close();
  const again = openStateDb(fresh);
  t.after(() => again.close());
  assert.equal(again.size, 0);
  assert.equal(again.stateKey().length, 32);
});
