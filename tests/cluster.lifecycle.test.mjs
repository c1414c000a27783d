// `kars-mesh cluster up --detach` on free loopback ports with the REAL relay
// and registry (.venv), pairing tokens made by the operator CLI, clients
// pairing with them (once; refused when reused, revoked or expired), and a
// down/up cycle that keeps the controller's identity and ledger. Every process
// the cluster started must be gone at the end, also when an assertion fails.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VENV_PYTHON, freePort } from './harness/servers.mjs';
import { alive, clusterPids, killAll, runCli, tokenIn, waitGone } from './harness/cluster.mjs';
import { createNode } from '../js-host/node-host.js';

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-cluster-'));
const dir = path.join(home, 'cluster');
const seenPids = new Set();
const nodes = [];

after(async () => {
  for (const n of nodes) await n.stop().catch(() => {});
  for (const p of clusterPids(dir)) seenPids.add(p);
  if (fs.existsSync(path.join(dir, 'cluster.json'))) await runCli(['cluster', 'down', '--dir', dir], { home, timeoutMs: 30_000 });
  killAll([...seenPids]);
  await waitGone([...seenPids], 5000);
  fs.rmSync(home, { recursive: true, force: true });
});

const cli = (args, opts = {}) => runCli(args, { home, timeoutMs: 90_000, ...opts });

function clusterJson() {
  const st = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8'));
  for (const p of clusterPids(dir)) seenPids.add(p);
  return st;
}

async function up(ports) {
  const r = await cli(['cluster', 'up', '--detach', '--dir', dir, ...ports]);
  for (const p of clusterPids(dir)) seenPids.add(p);
  assert.equal(r.code, 0, `cluster up failed:\n${r.stdout}\n${r.stderr}\n${fs.existsSync(path.join(dir, 'cluster.log')) ? fs.readFileSync(path.join(dir, 'cluster.log'), 'utf8') : ''}`);
  return r;
}

async function generate(args) {
  const r = await cli(['pair', 'generate', '--dir', dir, ...args]);
  assert.equal(r.code, 0, r.stderr);
  const token = tokenIn(r.stdout);
  assert.ok(token, `no azcp_1_ token on stdout:\n${r.stdout}`);
  assert.ok(!r.stderr.includes(token), 'the token goes to stdout only');
  return token;
}

async function client(name, st) {
  const stateDir = path.join(home, name);
  const n = await createNode({ stateDir, relayUrl: st.relay.url, registryUrl: st.registry.url, name });
  nodes.push(n);
  return n;
}

async function pairList() {
  const r = await cli(['pair', 'list', '--json', '--dir', dir]);
  assert.equal(r.code, 0, r.stderr);
  return Object.fromEntries(JSON.parse(r.stdout).details.mesh.pairings.map((p) => [p.name, p]));
}

test('cluster up/down, pairing tokens from the operator CLI, state kept across restarts', { timeout: 240_000 }, async () => {
  assert.ok(fs.existsSync(VENV_PYTHON), `${VENV_PYTHON} missing: run \`bash scripts/setup-venv.sh\` first`);
  const registryPort = await freePort();
  let relayPort = await freePort();
  while (relayPort === registryPort) relayPort = await freePort();

  // ---- up ------------------------------------------------------------------
  const first = await up(['--relay-port', String(relayPort), '--registry-port', String(registryPort), '--name', 'test-lab']);
  const st = clusterJson();
  assert.equal(st.phase, 'ready');
  assert.equal(st.relay.url, `http://127.0.0.1:${relayPort}`);
  assert.equal(st.registry.url, `http://127.0.0.1:${registryPort}`);
  assert.match(st.controller.did, /^did:mesh:[0-9a-f]{32}$/);
  assert.ok(first.stdout.includes(st.relay.url) && first.stdout.includes(st.registry.url), first.stdout);
  assert.ok(first.stdout.includes(st.controller.did), first.stdout);
  assert.ok(first.stdout.includes('kars-mesh pair generate --name NAME'), first.stdout);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  assert.equal(fs.statSync(path.join(dir, 'control.sock')).mode & 0o777, 0o600);
  // An empty list would make the liveness checks here and after `down` vacuous.
  const running = clusterPids(dir);
  assert.equal(running.length, 3, `cluster.json should list the cluster process, the relay and the registry: ${running}`);
  for (const pid of running) assert.ok(alive(pid), `pid ${pid} runs`);
  const health = await fetch(`${st.relay.url}/health`);
  assert.equal(health.status, 200);
  const status = await cli(['cluster', 'status', '--dir', dir]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /running/);

  // The expiring token first: its minute runs while the rest goes on.
  const expiring = await generate(['--name', 'soon', '--expires', '1m']);
  const expiringAt = Date.now() + 60_000;
  const aliceToken = await generate(['--name', 'alice', '--slots', '1', '--capabilities', 'offload']);
  const goneToken = await generate(['--name', 'gone']);
  const revoke = await cli(['pair', 'revoke', 'gone', '--dir', dir]);
  assert.equal(revoke.code, 0, revoke.stderr);
  assert.match(revoke.stdout, /revoked/);

  // ---- pairing: once, then refused -------------------------------------------
  // alice pairs with the client CLI; the relay and registry come from the token.
  const aliceState = path.join(home, 'alice');
  const paired = await cli(['--state', aliceState, 'pair-with', aliceToken]);
  assert.equal(paired.code, 0, paired.stderr);
  assert.match(paired.stdout, /^✅ Paired successfully with kars cluster "test-lab"/);
  const aliceId = await cli(['--state', aliceState, '--relay', st.relay.url, '--registry', st.registry.url, 'id', '--json']);
  const aliceDid = JSON.parse(aliceId.stdout).details.mesh.did;

  const bob = await client('bob', st);
  const reuse = await bob.callTool('mesh_pair', { token: aliceToken }, { timeoutMs: 45_000 });
  assert.equal(reuse.content[0].text, '❌ Pairing rejected by cluster: Pairing is Active — token already consumed or expired');
  const revoked = await bob.callTool('mesh_pair', { token: goneToken }, { timeoutMs: 45_000 });
  assert.equal(revoked.content[0].text, '❌ Pairing rejected by cluster: Pairing is Revoked — token already consumed or expired');

  // The CLI reports a refusal with exit code 1 and the controller's text (token from stdin).
  const reuseCli = await cli(['--state', path.join(home, 'carol'), 'pair-with', '-'], { input: `${aliceToken}\n` });
  assert.equal(reuseCli.code, 1);
  assert.match(reuseCli.stderr, /Pairing is Active — token already consumed or expired/);

  let list = await pairList();
  assert.equal(list.alice.phase, 'Active');
  assert.equal(list.alice.bound_did, aliceDid);
  assert.equal(list.alice.slots_max, 1);
  assert.deepEqual(list.alice.capabilities, ['offload']);
  assert.equal(list.gone.phase, 'Revoked');
  const text = await cli(['pair', 'list', '--dir', dir]);
  assert.match(text.stdout, /^alice\s+Active\s+slots 0\/1\s+offload\s/m);

  // No token ever reaches a log.
  const logs = [path.join(dir, 'cluster.log'), ...fs.readdirSync(path.join(dir, 'logs')).map((f) => path.join(dir, 'logs', f))];
  for (const f of logs) {
    const content = fs.readFileSync(f, 'utf8');
    for (const tok of [expiring, aliceToken, goneToken]) assert.ok(!content.includes(tok), `a token is in ${f}`);
  }

  // ---- down, up again: same identity, same ledger ------------------------------
  await bob.stop();
  const pids1 = clusterPids(dir);
  assert.equal(pids1.length, 3, `cluster.json lists ${pids1} before down`);
  const down = await cli(['cluster', 'down', '--dir', dir]);
  assert.equal(down.code, 0, down.stderr);
  assert.equal(fs.existsSync(path.join(dir, 'cluster.json')), false);
  assert.ok(await waitGone(pids1), `left running: ${pids1.filter(alive)}`);
  const downStatus = await cli(['cluster', 'status', '--dir', dir]);
  assert.equal(downStatus.code, 3);

  // An offload while the cluster is down: nothing is submitted, said so
  // with the relay and why (exit 3), never "working on it" and a wait that
  // cannot end; run again once the cluster is back, it goes through.
  const t0 = Date.now();
  const early = await cli(['--state', aliceState, 'offload', 'made while the cluster was down']);
  assert.equal(early.code, 3, `${early.stdout}\n${early.stderr}`);
  assert.match(early.stderr, new RegExp(`nothing was submitted: the relay at ${st.relay.url.replace(/[.]/g, '\\.')} cannot be reached: .*ECONNREFUSED.*Start the cluster \\(or check the relay\\), then run the offload again`));
  assert.doesNotMatch(early.stdout, /Offload submitted|working on it/);
  assert.ok(Date.now() - t0 < 20_000, `answered in ${Date.now() - t0} ms`);

  await up([]); // the ports and name of the last run are kept in DIR/config.json
  const followed = await cli(['--state', aliceState, 'offload', 'made while the cluster was down']);
  assert.equal(followed.code, 0, `${followed.stdout}\n${followed.stderr}`);
  assert.match(followed.stdout, /done — finished/);
  assert.match(followed.stdout, /received the task \(31 characters\)/);
  const st2 = clusterJson();
  assert.equal(st2.controller.did, st.controller.did, 'same controller DID after down/up');
  assert.equal(st2.relay.url, st.relay.url);
  assert.ok(!pids1.includes(st2.main.pid));
  list = await pairList();
  assert.equal(list.alice.phase, 'Active');
  assert.equal(list.alice.bound_did, aliceDid);
  assert.equal(list.soon.phase, 'PendingPairing');

  // ---- the expiring token, after its minute (on the restarted cluster) ----------
  const wait = expiringAt + 1500 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const dave = await client('dave', st2);
  const expired = await dave.callTool('mesh_pair', { token: expiring }, { timeoutMs: 45_000 });
  assert.equal(expired.content[0].text, '❌ Pairing rejected by cluster: Pairing token has expired');
  list = await pairList();
  assert.equal(list.soon.phase, 'Expired');
  await dave.stop();

  // ---- down leaves nothing behind ------------------------------------------------
  const pids2 = clusterPids(dir);
  assert.equal(pids2.length, 3);
  const down2 = await cli(['cluster', 'down', '--dir', dir]);
  assert.equal(down2.code, 0, down2.stderr);
  assert.ok(await waitGone(pids2), `left running: ${pids2.filter(alive)}`);
  assert.equal(fs.existsSync(path.join(dir, 'cluster.json')), false);
  assert.equal(fs.existsSync(path.join(dir, 'control.sock')), false);
  const again = await cli(['cluster', 'down', '--dir', dir]);
  assert.equal(again.code, 0);
  assert.match(again.stdout, /no cluster is running/);
});
