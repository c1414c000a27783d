// A foreground `cluster up` stops everything it started on Ctrl-C (SIGINT);
// a SIGKILLed cluster process takes its relay and registry along
// (PR_SET_PDEATHSIG), and the next `cluster down`/`up` copes with what it left.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VENV_PYTHON, freePort } from './harness/servers.mjs';
import { BIN, alive, cleanEnv, clusterPids, killAll, runCli, waitGone } from './harness/cluster.mjs';

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-cluster-sig-'));
const seen = new Set();
const dirs = [];
after(async () => {
  for (const d of dirs) for (const p of clusterPids(d)) seen.add(p);
  killAll([...seen]);
  await waitGone([...seen], 5000);
  fs.rmSync(home, { recursive: true, force: true });
});

async function ports() {
  const a = await freePort();
  let b = await freePort();
  while (b === a) b = await freePort();
  return ['--relay-port', String(a), '--registry-port', String(b)];
}

test('foreground cluster up: Ctrl-C stops the controller, relay and registry', { timeout: 90_000 }, async () => {
  assert.ok(fs.existsSync(VENV_PYTHON), `${VENV_PYTHON} missing: run \`bash scripts/setup-venv.sh\` first`);
  const dir = path.join(home, 'fg');
  dirs.push(dir);
  const child = spawn(process.execPath, [BIN, 'cluster', 'up', '--dir', dir, ...(await ports())], {
    env: cleanEnv({ HOME: home }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  seen.add(child.pid);
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`not up after 60 s:\n${stdout}\n${stderr}`)), 60_000);
    child.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('Ctrl-C stops it')) { clearTimeout(t); resolve(); }
    });
    exited.then((x) => { clearTimeout(t); reject(new Error(`exited ${JSON.stringify(x)}:\n${stdout}\n${stderr}`)); });
  });
  const pids = clusterPids(dir);
  for (const p of pids) seen.add(p);
  assert.equal(pids.length, 3);
  assert.equal(pids[0], child.pid);

  child.kill('SIGINT');
  const x = await exited;
  assert.equal(x.code, 0, stderr);
  assert.match(stderr, /stopping the cluster/);
  assert.ok(await waitGone(pids), `left running: ${pids.filter(alive)}`);
  assert.equal(fs.existsSync(path.join(dir, 'cluster.json')), false);
  assert.equal(fs.existsSync(path.join(dir, 'control.sock')), false);
});

test('a SIGKILLed cluster process takes relay and registry along; down and up recover', { timeout: 120_000 }, async () => {
  const dir = path.join(home, 'kill');
  dirs.push(dir);
  const p = await ports();
  const up = await runCli(['cluster', 'up', '--detach', '--dir', dir, ...p], { home, timeoutMs: 90_000 });
  for (const pid of clusterPids(dir)) seen.add(pid);
  assert.equal(up.code, 0, up.stderr);
  const pids = clusterPids(dir);
  process.kill(pids[0], 'SIGKILL');
  assert.ok(await waitGone(pids), `left running: ${pids.filter(alive)}`);

  const status = await runCli(['cluster', 'status', '--dir', dir], { home });
  assert.equal(status.code, 3);
  assert.match(status.stdout, /which is gone/);
  // `up` replaces what the dead cluster left (cluster.json, control.sock).
  const again = await runCli(['cluster', 'up', '--detach', '--dir', dir], { home, timeoutMs: 90_000 });
  for (const pid of clusterPids(dir)) seen.add(pid);
  assert.equal(again.code, 0, again.stderr);
  const list = await runCli(['pair', 'list', '--dir', dir], { home });
  assert.equal(list.code, 0, list.stderr);
  const pids2 = clusterPids(dir);
  const down = await runCli(['cluster', 'down', '--dir', dir], { home, timeoutMs: 30_000 });
  assert.equal(down.code, 0, down.stderr);
  assert.ok(await waitGone(pids2), `left running: ${pids2.filter(alive)}`);
});
