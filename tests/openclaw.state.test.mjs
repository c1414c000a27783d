// The plugin's state under OpenClaw's state directory, in a REAL OpenClaw
// Gateway (openclaw 2026.9.6, Node 24), no `state_dir` configured:
//   - a fresh OpenClaw home whose HOME holds a ~/.kars-mesh the CLI made: the
//     Gateway imports it once into $OPENCLAW_STATE_DIR/kars-mesh and runs the
//     same identity (DID); the CLI's default follows it there and finds it
//     locked while the Gateway runs; a restart imports nothing;
//   - `openclaw backup create` keeps what the manifest's backupResources
//     declare (kars-mesh/: state.key and state.db), and the restored copy is
//     the same identity;
//   - a read-only HOME (with a ~/.kars-mesh in it) and a writable
//     OPENCLAW_STATE_DIR: the plugin works and nothing is written in HOME;
//   - no writable place: every tool fails with a message naming the path
//     tried and the fix.
// The relay is unreachable (127.0.0.1:9): none of this needs the network.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { makeOpenClawHome, ROOT } from './harness/openclaw.mjs';

const OFFLINE = { relay_url: 'http://127.0.0.1:9', registry_url: 'http://127.0.0.1:9' };
const STARTED = /kars-mesh: mesh node started \((did:mesh:[0-9a-f]{32})\); state directory (\S+)/;
const isRoot = process.getuid?.() === 0;

const homes = [];
const gateways = [];
after(async () => {
  for (const g of gateways) await g.stop().catch(() => {});
  for (const h of homes) h.cleanup();
});
function home(opts) {
  const h = makeOpenClawHome({ pluginConfig: OFFLINE, ...opts });
  homes.push(h);
  return h;
}
async function gateway(h, opts) {
  const g = await h.startGateway(opts);
  gateways.push(g);
  return g;
}

/** `kars-mesh [args]` as the user of this OpenClaw home (its HOME). */
function cli(h, args) {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/kars-mesh'), ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: h.home, KARS_MESH_RELAY: OFFLINE.relay_url, KARS_MESH_REGISTRY: OFFLINE.registry_url },
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
function cliDid(h, args = []) {
  const r = cli(h, [...args, 'id']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return /^DID: (did:mesh:[0-9a-f]{32})$/m.exec(r.stdout)[1];
}

function tree(dir) {
  const out = {};
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      const st = fs.lstatSync(path.join(dir, r));
      if (e.isDirectory()) {
        out[r] = `dir ${st.mode & 0o777} ${st.mtimeMs}`;
        walk(r);
      } else out[r] = `${st.mode & 0o777} ${st.mtimeMs} ${createHash('sha256').update(fs.readFileSync(path.join(dir, r))).digest('hex')}`;
    }
  };
  walk('');
  return out;
}

async function started(g) {
  assert.ok(await g.waitForLog(STARTED, 60_000), `the mesh node did not start:\n${g.logs().slice(-4000)}`);
  const [, did, dir] = STARTED.exec(g.logs());
  return { did, dir };
}

async function inboxWorks(g) {
  const r = await g.invoke('mesh_inbox', {}, 30_000);
  assert.equal(r.status, 200, r.text.slice(0, 1000));
  assert.match(r.json.result.content[0].text, /^📭 /, r.text.slice(0, 1000));
}

test('a fresh OpenClaw home with ~/.kars-mesh: imported once into $OPENCLAW_STATE_DIR/kars-mesh, same DID; the CLI shares it through the lock; a backup keeps it', { timeout: 300_000 }, async () => {
  const h = home();
  const legacyDid = cliDid(h); // the CLI's default: ~/.kars-mesh
  const legacy = path.join(h.home, '.kars-mesh');
  const target = path.join(h.stateDir, 'kars-mesh');

  let g = await gateway(h);
  const first = await started(g);
  assert.equal(first.did, legacyDid, 'the imported identity');
  assert.equal(first.dir, target);
  assert.match(g.logs(), new RegExp(`kars-mesh: imported the kars-mesh state directory ${legacy} into ${target} \\(\\d+ files, \\d+ bytes, verified\\)`));
  assert.equal(JSON.parse(fs.readFileSync(path.join(legacy, 'MOVED.json'), 'utf8')).moved_to, target);
  await inboxWorks(g);

  // The CLI's default follows MOVED.json to the same identity, which the Gateway holds.
  const busy = cli(h, ['id']);
  assert.equal(busy.code, 3, busy.stdout + busy.stderr);
  assert.match(busy.stderr, new RegExp(`state directory ${target} is in use by process \\d+`));

  // A backup while the Gateway runs keeps kars-mesh/ (state.key and state.db).
  const out = path.join(h.base, 'backups');
  fs.mkdirSync(out);
  const b = await h.run(['backup', 'create', '--output', out, '--verify', '--json', '--no-include-workspace'], { timeoutMs: 120_000 });
  assert.equal(b.code, 0, b.stdout.slice(0, 2000) + b.stderr.slice(-2000));
  assert.equal(b.json.verified, true);
  const listing = spawnSync('tar', ['-tzf', b.json.archivePath], { encoding: 'utf8' }).stdout.split('\n');
  const rel = (f) => listing.find((l) => l.endsWith(`${h.stateDir}/kars-mesh/${f}`));
  assert.ok(rel('state.key') && rel('state.db'), `kars-mesh state missing from the backup:\n${listing.filter((l) => l.includes('kars-mesh')).join('\n')}`);
  assert.equal(rel('lock'), undefined, 'the lock is not state (backupResources: regenerable)');

  // Restart: nothing imported again, the same identity.
  await g.stop();
  g = await gateway(h);
  const second = await started(g);
  assert.equal(second.did, legacyDid);
  assert.doesNotMatch(g.logs(), /imported the kars-mesh state directory/);
  await g.stop();
  // With the Gateway stopped, the CLI's default runs the same identity.
  assert.equal(cliDid(h), legacyDid);

  // The backup restored elsewhere is the same identity.
  const restored = path.join(h.base, 'restored');
  const r = await h.run(['backup', 'restore', b.json.archivePath, '--target', restored, '--json'], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stdout.slice(0, 2000) + r.stderr.slice(-2000));
  const restoredKey = spawnSync('find', [restored, '-path', '*/kars-mesh/state.key'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
  assert.equal(restoredKey.length, 1, `kars-mesh/state.key under ${restored}: ${restoredKey.join(', ')}`);
  const restoredDir = path.dirname(restoredKey[0]);
  assert.equal(cliDid(h, ['--state', restoredDir]), legacyDid);
});

test('a read-only HOME (holding ~/.kars-mesh) and a writable OPENCLAW_STATE_DIR: the plugin works and writes nothing in HOME', { timeout: 180_000, skip: !isRoot && 'needs root for a read-only bind mount (unshare -m)' }, async () => {
  const h = home();
  const legacyDid = cliDid(h);
  const before = tree(h.home);
  // OpenClaw itself stages SQLite snapshots under $XDG_CACHE_HOME (default
  // ~/.cache): it needs a writable one too.
  const cache = path.join(h.base, 'cache');
  fs.mkdirSync(cache, { mode: 0o700 });
  const g = await gateway(h, { readOnly: [h.home], env: { XDG_CACHE_HOME: cache } });
  const { did, dir } = await started(g);
  assert.equal(did, legacyDid);
  assert.equal(dir, path.join(h.stateDir, 'kars-mesh'));
  assert.match(g.logs(), /kars-mesh: could not leave MOVED\.json in \S+\.kars-mesh \(.*read-only file system.*\); do not use \S+ any more/i);
  await inboxWorks(g);
  await g.stop();
  assert.deepEqual(tree(h.home), before, 'something was written in the read-only HOME');
});

test('no writable place for the state: every tool fails with the paths tried and the fix', { timeout: 180_000 }, async () => {
  const h = home();
  fs.writeFileSync(path.join(h.stateDir, 'kars-mesh'), 'a file where the state directory would go');
  const g = await gateway(h);
  assert.ok(await g.waitForLog(/kars-mesh: mesh node did not start: no writable place/, 60_000), g.logs().slice(-4000));
  const r = await g.invoke('mesh_inbox', {}, 30_000);
  assert.equal(r.status, 400, r.text.slice(0, 1000));
  assert.equal(r.json.ok, false);
  assert.equal(
    r.json.error.message,
    `❌ Failed to connect to mesh: no writable place for the kars-mesh state directory; tried ${path.join(h.stateDir, 'kars-mesh')} (exists but is not a directory). ` +
      'Set plugins.entries.kars-mesh.config.state_dir (or the environment variable KARS_MESH_STATE) to a directory the Gateway can write, ' +
      `or make ${path.join(h.stateDir, 'kars-mesh')} writable for it.`,
  );
  await g.stop();
});
