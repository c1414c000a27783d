// The OpenClaw plugin's default state directory (js-host/state-location.js):
//   - <OpenClaw state dir>/kars-mesh, made 0700; a NemoClaw-style
//     <state dir>-data/kars-mesh when the state dir takes no new directory;
//     an existing state directory wins; no writable place: an error naming
//     every path tried and the fix;
//   - the one-time import of ~/.kars-mesh: same identity (DID) afterwards,
//     every file copied byte for byte, the original left as it was plus
//     MOVED.json, never imported twice, nothing touched when both exist, an
//     original in use by a CLI process is not copied (and says why), a
//     read-only original is copied without a note;
//   - a moved directory is refused by the host, and the CLI's default
//     follows the note (one identity, shared through its lock).
// Identities are made and read with the real CLI (bin/kars-mesh id) against
// an unreachable relay: nothing here needs the network.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  chooseStateDir,
  followMoved,
  openclawStateDirFromEnv,
  importStateDir,
  prepareDefaultStateDir,
  readMoved,
  stateCandidates,
  MOVED_MARKER,
} from '../js-host/state-location.js';
import { refuseMovedDir, StateDirError } from '../js-host/storage-fs.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin/kars-mesh');
const OFFLINE = { KARS_MESH_RELAY: 'http://127.0.0.1:9', KARS_MESH_REGISTRY: 'http://127.0.0.1:9' };
const isRoot = process.getuid?.() === 0;

const dirs = [];
after(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
function tmp(name) {
  const d = fs.mkdtempSync(path.join(tmpdir(), `kars-loc-${name}-`));
  dirs.push(d);
  return d;
}

/** `kars-mesh [args]` with HOME set; {code, stdout, stderr}. */
function cli(home, args, env = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: home, ...OFFLINE, ...env },
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
function did(home, args = []) {
  const r = cli(home, [...args, 'id']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return /^DID: (did:mesh:[0-9a-f]{32})$/m.exec(r.stdout)[1];
}

/** Every file under dir: relative path -> sha256 (and the directories, as 'dir'). */
function tree(dir) {
  const out = {};
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) {
        out[r] = 'dir';
        walk(r);
      } else out[r] = createHash('sha256').update(fs.readFileSync(path.join(dir, r))).digest('hex');
    }
  };
  walk('');
  return out;
}
const mode = (p) => fs.statSync(p).mode & 0o777;

/** A HOME whose ~/.kars-mesh the CLI made (its default), with a received file; returns {home, legacy, did}. */
function homeWithLegacy(name) {
  const home = tmp(name);
  const d = did(home);
  const legacy = path.join(home, '.kars-mesh');
  fs.mkdirSync(path.join(legacy, 'files', 'incoming', 'abcd1234'), { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(legacy, 'files', 'incoming', 'abcd1234', 'out.txt'), 'an offload output\n', { mode: 0o600 });
  fs.writeFileSync(path.join(legacy, 'endpoints.json'), '{"relay_url":"http://127.0.0.1:9","registry_url":"http://127.0.0.1:9"}\n', { mode: 0o600 });
  return { home, legacy, did: d };
}

test('the default place: <OpenClaw state dir>/kars-mesh, private; existing state wins; no place: an error naming the paths and the fix', () => {
  const oc = tmp('oc');
  assert.deepEqual(stateCandidates(oc), [path.join(oc, 'kars-mesh')]);
  const dir = chooseStateDir(oc);
  assert.equal(dir, path.join(oc, 'kars-mesh'));
  assert.equal(mode(dir), 0o700);
  assert.deepEqual(fs.readdirSync(dir), [], 'nothing left behind by the write check');

  // A NemoClaw-style writable twin is a candidate only when it exists; state there wins.
  const data = `${oc}-data`;
  dirs.push(data);
  fs.mkdirSync(path.join(data, 'kars-mesh'), { recursive: true, mode: 0o700 });
  assert.deepEqual(stateCandidates(oc), [path.join(oc, 'kars-mesh'), path.join(data, 'kars-mesh')]);
  assert.equal(chooseStateDir(oc), path.join(oc, 'kars-mesh'), 'no state anywhere: the first place');
  fs.writeFileSync(path.join(data, 'kars-mesh', 'state.key'), Buffer.alloc(32), { mode: 0o600 });
  assert.equal(chooseStateDir(oc), path.join(data, 'kars-mesh'), 'the place that holds state wins');

  // No place: the default is taken by a file and there is no twin.
  const oc2 = tmp('oc2');
  fs.writeFileSync(path.join(oc2, 'kars-mesh'), 'not a directory');
  assert.throws(() => chooseStateDir(oc2), (e) => {
    assert.ok(e instanceof StateDirError);
    assert.equal(e.code, 'KARS_MESH_STATE_NO_PLACE');
    assert.ok(e.message.includes(`tried ${path.join(oc2, 'kars-mesh')} (exists but is not a directory)`), e.message);
    assert.match(e.message, /Set plugins\.entries\.kars-mesh\.config\.state_dir \(or the environment variable KARS_MESH_STATE\)/);
    return true;
  });
});

test('a read-only OpenClaw state dir with a writable <state dir>-data (NemoClaw\'s layout): the state goes there, nothing is written in the read-only one', { skip: !isRoot && 'needs root for a read-only bind mount (unshare -m)' }, () => {
  const base = tmp('nemo');
  const oc = path.join(base, '.openclaw');
  const data = path.join(base, '.openclaw-data');
  fs.mkdirSync(oc, { mode: 0o700 });
  fs.mkdirSync(data, { mode: 0o700 });
  const before = tree(oc);
  const script = `import { chooseStateDir } from ${JSON.stringify(path.join(ROOT, 'js-host/state-location.js'))};
    try { console.log(JSON.stringify({ dir: chooseStateDir(process.argv[1]) })); } catch (e) { console.log(JSON.stringify({ error: e.message })); }`;
  const run = (roPaths) => {
    const mounts = roPaths.map((p) => `mount --bind ${p} ${p} && mount -o remount,bind,ro ${p}`).join(' && ');
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `${mounts} && exec "$0" --input-type=module -e "$1" "$2"`, process.execPath, script, oc], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  assert.deepEqual(run([oc]), { dir: path.join(data, 'kars-mesh') });
  assert.deepEqual(tree(oc), before, 'nothing written in the read-only state dir');
  assert.equal(mode(path.join(data, 'kars-mesh')), 0o700);
  // Neither writable: the error names both places.
  fs.rmSync(path.join(data, 'kars-mesh'), { recursive: true });
  const { error } = run([oc, data]);
  assert.match(error, new RegExp(`tried ${oc}/kars-mesh \\(EROFS: .*\\); ${data}/kars-mesh \\(EROFS: `), error);
});

test('import of ~/.kars-mesh: same DID, every file byte for byte, the original kept with MOVED.json, refused by the host, followed by the CLI, never twice', () => {
  const { home, legacy, did: legacyDid } = homeWithLegacy('imp');
  const oc = tmp('imp-oc');
  const original = tree(legacy);
  const logs = [];
  const dir = prepareDefaultStateDir({ openclawStateDir: oc, home, log: (level, m) => logs.push([level, m]) });
  assert.equal(dir, path.join(oc, 'kars-mesh'));
  assert.deepEqual(logs.map(([l]) => l), ['info'], JSON.stringify(logs));
  assert.match(logs[0][1], new RegExp(`^imported the kars-mesh state directory ${legacy} into ${dir} \\(\\d+ files, \\d+ bytes, verified\\)$`));

  // The copy: the same files (the lock is the using process's, not copied), private.
  const copied = tree(dir);
  const want = { ...original };
  assert.deepEqual(copied, want);
  assert.equal(mode(dir), 0o700);
  assert.equal(mode(path.join(dir, 'state.key')), 0o600);
  assert.equal(mode(path.join(dir, 'files', 'incoming', 'abcd1234', 'out.txt')), 0o600);
  assert.deepEqual(fs.readdirSync(oc).sort(), ['kars-mesh'], 'no temporary import directory left');

  // The original: unchanged, plus MOVED.json naming the new place.
  const now = tree(legacy);
  assert.ok(now[MOVED_MARKER]);
  delete now[MOVED_MARKER];
  assert.deepEqual(now, original);
  const moved = readMoved(legacy);
  assert.equal(moved.moved_to, dir);
  assert.match(moved.imported_at, /^\d{4}-\d\d-\d\dT/);

  // Same identity in the new place; the old place is refused; the CLI's default follows the note.
  assert.equal(did(home, ['--state', dir]), legacyDid);
  assert.throws(() => refuseMovedDir(legacy), (e) => e.code === 'KARS_MESH_STATE_MOVED' && e.message.includes(`was imported into ${dir}`));
  const refused = cli(home, ['--state', legacy, 'id']);
  assert.equal(refused.code, 3, refused.stdout + refused.stderr);
  assert.match(refused.stderr, new RegExp(`state directory ${legacy} was imported into ${dir} and is not used any more`));
  assert.equal(followMoved(legacy), dir);
  assert.equal(did(home), legacyDid, 'the CLI default (~/.kars-mesh) follows MOVED.json');
  assert.ok(!fs.existsSync(path.join(legacy, 'lock')) && fs.readdirSync(legacy).every((f) => !f.startsWith('lock')), 'the CLI did not lock the old place');

  // Once: a second start imports nothing and says nothing.
  const again = [];
  assert.equal(prepareDefaultStateDir({ openclawStateDir: oc, home, log: (l, m) => again.push([l, m]) }), dir);
  assert.deepEqual(again, []);
  // Another OpenClaw state dir later: a new identity there, a warning, the old one untouched.
  const oc2 = tmp('imp-oc2');
  const other = [];
  const dir2 = prepareDefaultStateDir({ openclawStateDir: oc2, home, log: (l, m) => other.push([l, m]) });
  assert.deepEqual(fs.readdirSync(dir2), []);
  assert.deepEqual(other.map(([l]) => l), ['warn']);
  assert.match(other[0][1], new RegExp(`was imported into ${dir} earlier`));
});

test('both exist: nothing imported, nothing changed, a warning names both', () => {
  const { home, legacy } = homeWithLegacy('both');
  const oc = tmp('both-oc');
  const target = path.join(oc, 'kars-mesh');
  const targetDid = did(home, ['--state', target]);
  const [legacyBefore, targetBefore] = [tree(legacy), tree(target)];
  const logs = [];
  assert.equal(prepareDefaultStateDir({ openclawStateDir: oc, home, log: (l, m) => logs.push([l, m]) }), target);
  assert.deepEqual(tree(legacy), legacyBefore);
  assert.deepEqual(tree(target), targetBefore);
  assert.deepEqual(logs.map(([l]) => l), ['warn']);
  assert.match(logs[0][1], new RegExp(`both ${target} \\(used\\) and ${legacy} hold a kars-mesh identity; ${legacy} was not imported`));
  assert.equal(did(home, ['--state', target]), targetDid);
});

test('an original in use by another process is not copied: the error says who and what to do; the next start imports it', async () => {
  const { home, legacy, did: legacyDid } = homeWithLegacy('busy');
  const oc = tmp('busy-oc');
  // A live process holds ~/.kars-mesh's lock (as a running CLI command does).
  const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  try {
    fs.writeFileSync(path.join(legacy, 'lock'), `${holder.pid}\n`);
    assert.throws(() => prepareDefaultStateDir({ openclawStateDir: oc, home }), (e) => {
      assert.equal(e.code, 'KARS_MESH_STATE_LOCKED');
      assert.match(e.message, new RegExp(`^${legacy} is to be imported into OpenClaw's state directory, but it is in use \\(.*process ${holder.pid}.*\\)\\. Stop that process`));
      return true;
    });
    assert.equal(readMoved(legacy), undefined);
    assert.ok(fs.readdirSync(path.join(oc, 'kars-mesh')).length === 0, 'nothing imported');
  } finally {
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
  }
  // The holder is gone: its lock is stale, the import runs.
  const dir = prepareDefaultStateDir({ openclawStateDir: oc, home });
  assert.equal(did(home, ['--state', dir]), legacyDid);
  assert.equal(readMoved(legacy).moved_to, dir);
});

test('a read-only ~/.kars-mesh is copied as it is: imported, no note, a warning, nothing written in HOME', { skip: !isRoot && 'needs root for a read-only bind mount (unshare -m)' }, () => {
  const { home, legacy, did: legacyDid } = homeWithLegacy('ro');
  const oc = tmp('ro-oc');
  const before = tree(home);
  const script = `import { prepareDefaultStateDir } from ${JSON.stringify(path.join(ROOT, 'js-host/state-location.js'))};
    const logs = [];
    const dir = prepareDefaultStateDir({ openclawStateDir: process.argv[1], home: process.argv[2], log: (l, m) => logs.push([l, m]) });
    console.log(JSON.stringify({ dir, logs }));`;
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount --bind "$3" "$3" && mount -o remount,bind,ro "$3" && exec "$0" --input-type=module -e "$1" "$2" "$3"`, process.execPath, script, oc, home], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const { dir, logs } = JSON.parse(r.stdout);
  assert.deepEqual(tree(home), before, 'nothing written in the read-only HOME');
  assert.deepEqual(logs.map(([l]) => l), ['info', 'warn'], JSON.stringify(logs));
  assert.match(logs[1][1], new RegExp(`could not leave MOVED.json in ${legacy} \\(.*read-only file system.*\\); do not use ${legacy} any more`, 'i'));
  assert.equal(did(home, ['--state', dir]), legacyDid);
});

test('importStateDir refuses a symbolic link in the original and leaves nothing behind', () => {
  const { legacy } = homeWithLegacy('link');
  const oc = tmp('link-oc');
  fs.symlinkSync('/etc/passwd', path.join(legacy, 'files', 'passwd'));
  const target = path.join(oc, 'kars-mesh');
  assert.throws(() => importStateDir(legacy, target), /passwd is a symbolic link; a state directory holds none/);
  assert.deepEqual(fs.readdirSync(oc), []);
  assert.equal(readMoved(legacy), undefined);
  assert.ok(!fs.existsSync(path.join(legacy, 'lock')), 'the lock was released');
});

test('OPENCLAW_STATE_DIR is read as OpenClaw reads it: ~ is the home directory, another relative path is taken from the working directory', () => {
  const home = '/home/u';
  const cwd = '/srv/gateway';
  const none = () => false;
  const dirs = (...d) => (p) => d.includes(p);
  assert.equal(openclawStateDirFromEnv({}, home, cwd, none), '/home/u/.openclaw');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: '  ' }, home, cwd, none), '/home/u/.openclaw');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: '~' }, home, cwd, none), '/home/u');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: '~/oc' }, home, cwd, none), '/home/u/oc');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: 'oc-state' }, home, cwd, none), '/srv/gateway/oc-state');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: '/abs/oc ' }, home, cwd, none), '/abs/oc');
  // Where earlier versions put it (from the home directory) and only there:
  // kept, so its identity is not replaced by a new one.
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: 'oc-state' }, home, cwd, dirs('/home/u/oc-state')), '/home/u/oc-state');
  assert.equal(openclawStateDirFromEnv({ OPENCLAW_STATE_DIR: 'oc-state' }, home, cwd, dirs('/home/u/oc-state', '/srv/gateway/oc-state')), '/srv/gateway/oc-state');
});
