// `kars-mesh pair ...` with no cluster running: the CLI opens the controller's
// state directory itself (no relay or registry needed), and `cluster
// down/status` act only on processes that still are the ones cluster.json
// names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { alive, runCli, tokenIn, waitGone } from './harness/cluster.mjs';

function tmp(t) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-cluster-offline-'));
  t.after(() => fs.rmSync(home, { recursive: true, force: true }));
  return home;
}

function decode(token) {
  return JSON.parse(Buffer.from(token.slice('azcp_1_'.length), 'base64url').toString('utf8'));
}

test('pair generate/list/revoke work on the state directory when no cluster runs', { timeout: 60_000 }, async (t) => {
  const home = tmp(t);
  const dir = path.join(home, 'c');
  const cli = (args) => runCli([...args, '--dir', dir], { home });

  const none = await cli(['pair', 'list']);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no cluster state in .* cluster up/);

  const gen = await cli(['pair', 'generate', '--name', 'Alice Laptop', '--slots', '2', '--capabilities', 'offload', '--expires', '12h', '--token-budget', '1000']);
  assert.equal(gen.code, 0, gen.stderr);
  const token = tokenIn(gen.stdout);
  assert.ok(token, gen.stdout);
  assert.ok(!gen.stderr.includes(token));
  // Made here and now (a mistyped --dir would do the same): said, with what the token needs.
  assert.match(gen.stderr, /no cluster has run in .* yet: its controller was made now, and this token works once `kars-mesh cluster up --dir .*` runs it \(relay http:\/\/127\.0\.0\.1:8083\)/);
  // No cluster ever ran here: the token names the default local URLs.
  const payload = decode(token);
  assert.equal(payload.relay_url, 'http://127.0.0.1:8083');
  assert.equal(payload.registry_url, 'http://127.0.0.1:8082');
  assert.match(payload.controller_did, /^did:mesh:[0-9a-f]{32}$/);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  assert.equal(fs.existsSync(path.join(dir, 'controller', 'lock')), false, 'the state dir is released');

  const list = await cli(['pair', 'list', '--json']);
  assert.equal(list.code, 0, list.stderr);
  const [p] = JSON.parse(list.stdout).details.mesh.pairings;
  assert.equal(p.name, 'alice-laptop');
  assert.equal(p.phase, 'PendingPairing');
  assert.equal(p.slots_max, 2);
  assert.equal(p.token_budget, 1000);
  assert.deepEqual(p.capabilities, ['offload']);
  assert.ok(!list.stdout.includes(payload.secret), 'the secret is not stored');

  const dup = await cli(['pair', 'generate', '--name', 'alice-laptop']);
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /already exists; revoke it or pick another name/);

  // Revoked by the name it was generated with, too.
  const rev = await cli(['pair', 'revoke', 'Alice Laptop']);
  assert.equal(rev.code, 0, rev.stderr);
  assert.match(rev.stdout, /Pairing "alice-laptop" revoked/);
  const missing = await cli(['pair', 'revoke', 'nobody']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no pairing named "nobody"/);

  const text = await cli(['pair', 'list']);
  assert.match(text.stdout, /^alice-laptop\s+Revoked\s+slots 0\/2\s+offload\s/m);

  // The same controller identity every time; a stale control.sock (nothing listens) is ignored.
  fs.writeFileSync(path.join(dir, 'control.sock'), '');
  const gen2 = await cli(['pair', 'generate', '--name', 'bob']);
  assert.equal(gen2.code, 0, gen2.stderr);
  assert.doesNotMatch(gen2.stderr, /no cluster has run/, 'said once, when the controller was made');
  assert.equal(decode(tokenIn(gen2.stdout)).controller_did, payload.controller_did);
});

test('tokens made offline name the ports of the last cluster up (config.json)', { timeout: 30_000 }, async (t) => {
  const home = tmp(t);
  const dir = path.join(home, 'c');
  fs.mkdirSync(dir, { mode: 0o700 });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ name: 'lab', relayPort: 19083, registryPort: 19082 }));
  const gen = await runCli(['pair', 'generate', '--name', 'x', '--dir', dir], { home });
  assert.equal(gen.code, 0, gen.stderr);
  const payload = decode(tokenIn(gen.stdout));
  assert.equal(payload.relay_url, 'http://127.0.0.1:19083');
  assert.equal(payload.registry_url, 'http://127.0.0.1:19082');
  assert.equal(payload.cluster, 'lab');
});

test('cluster down stops a listed process only while it is the one we started', { timeout: 30_000 }, async (t) => {
  const home = tmp(t);
  const dir = path.join(home, 'c');
  fs.mkdirSync(dir, { mode: 0o700 });
  const spawnDummy = (...args) => {
    const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', ...args], { stdio: 'ignore' });
    t.after(() => { try { c.kill('SIGKILL'); } catch { /* gone */ } });
    return c;
  };
  const starttime = (pid) => {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  };
  const writeState = (pid, match) => fs.writeFileSync(path.join(dir, 'cluster.json'), JSON.stringify({
    name: 'fake', dir, mode: 'detached', phase: 'ready', startedAt: new Date().toISOString(),
    main: { pid, starttime: starttime(pid), match },
    registry: { url: 'http://127.0.0.1:1', port: 1 },
    relay: { url: 'http://127.0.0.1:2', port: 2 },
    controller: {},
  }));

  // A pid that is not (any more) ours: its command line does not match.
  const other = spawnDummy('something-else');
  await new Promise((r) => setTimeout(r, 200));
  writeState(other.pid, ['cluster']);
  const status = await runCli(['cluster', 'status', '--dir', dir], { home });
  assert.equal(status.code, 3);
  assert.match(status.stdout, /no cluster is running/);
  const down = await runCli(['cluster', 'down', '--dir', dir], { home });
  assert.equal(down.code, 0, down.stderr);
  assert.ok(alive(other.pid), 'a process that is not ours is left alone');
  assert.equal(fs.existsSync(path.join(dir, 'cluster.json')), false);

  // Ours: `cluster up` refuses to start a second one; down stops it.
  const ours = spawnDummy('cluster', 'up');
  await new Promise((r) => setTimeout(r, 200));
  writeState(ours.pid, ['cluster']);
  const up = await runCli(['cluster', 'up', '--dir', dir], { home });
  assert.equal(up.code, 1);
  assert.match(up.stderr, /already running .* cluster down/);
  const down2 = await runCli(['cluster', 'down', '--dir', dir], { home });
  assert.equal(down2.code, 0, down2.stderr);
  assert.ok(await waitGone([ours.pid], 5000), 'our process was stopped');
  assert.ok(alive(other.pid));
});
