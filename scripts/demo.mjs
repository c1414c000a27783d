#!/usr/bin/env node
// The kars-mesh demo (README: `npm run demo`): a local kars cluster, two agents
// built from the OpenClaw plugin's own tool handlers, pairing, an encrypted
// message each way, and an offload with an input file whose phases are shown
// as they happen. Everything runs on 127.0.0.1 and is stopped at the end.
//
//   node scripts/demo.mjs [--keep]     (--keep: leave the temp directory)

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin/kars-mesh');
const keep = process.argv.includes('--keep');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-mesh-demo-'));
const clusterDir = path.join(work, 'cluster');

const bold = (s) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
const step = (n, s) => console.log(`\n${bold(`── ${n}. ${s}`)}`);
const indent = (s, pad = '   ') => String(s).split('\n').map((l) => pad + l).join('\n');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function cli(args, { input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    if (input) child.stdin.end(input);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`kars-mesh ${args[0]} ${args[1] ?? ''} failed (${code}):\n${out}${err}`))));
  });
}

/** An agent = the plugin registered into a minimal OpenClaw API; its tools are the plugin's handlers. */
async function agent(plugin, name, urls) {
  const tools = new Map();
  const services = [];
  plugin.register({
    registrationMode: 'full',
    pluginConfig: { state_dir: path.join(work, name), relay_url: urls.relay, registry_url: urls.registry, display_name: name },
    logger: { info() {}, warn: (m) => console.error(dim(`   [${name}] ${m}`)), error: (m) => console.error(dim(`   [${name}] ${m}`)) },
    registerTool: (t) => tools.set(t.name, t),
    registerService: (s) => services.push(s),
    registerCommand() {},
    on() {},
  });
  for (const s of services) await s.start({});
  let n = 0;
  const call = async (tool, params) => {
    const r = await tools.get(tool).execute(`demo-${name}-${++n}`, params);
    return { text: r.content?.[0]?.text ?? '', mesh: r.details?.mesh ?? {} };
  };
  return { name, call, stop: () => Promise.all(services.map((s) => s.stop())) };
}

let cleanupDone = false;
async function cleanup(plugin) {
  if (cleanupDone) return;
  cleanupDone = true;
  await plugin?.stopAll?.().catch(() => {});
  await cli(['cluster', 'down', '--dir', clusterDir]).catch(() => {});
  if (!keep) fs.rmSync(work, { recursive: true, force: true });
}

let pluginMod;
try {
  console.log(bold('kars-mesh demo') + dim(`  (work directory ${work})`));

  step(1, 'Start a local kars cluster: the real AgentMesh registry and relay, and a controller');
  const ports = [await freePort(), await freePort()];
  const up = await cli(['cluster', 'up', '--detach', '--dir', clusterDir, '--registry-port', String(ports[0]), '--relay-port', String(ports[1]), '--name', 'demo-lab']);
  console.log(indent(up.trim()));
  const urls = { registry: `http://127.0.0.1:${ports[0]}`, relay: `http://127.0.0.1:${ports[1]}` };

  step(2, 'Two agents, each the kars-mesh OpenClaw plugin with its own identity');
  pluginMod = await import(path.join(ROOT, 'js-host/plugin.js'));
  const plugin = { register: pluginMod.default.register, stopAll: pluginMod.stopAllNodes };
  const alice = await agent(plugin, 'alice', urls);
  const bob = await agent(plugin, 'bob', urls);
  for (const [a, other] of [[alice, bob], [bob, alice]]) {
    // The other agent registers in the background; give it a moment.
    let d;
    for (let i = 0; i < 30; i++) {
      d = await a.call('discover', { capability: other.name });
      if (/^🌐 [1-9]/.test(d.text)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    console.log(indent(`${a.name} discovers "${other.name}": ${d.text.split('\n').slice(0, 2).join(' ')}`));
  }

  step(3, 'The operator makes a one-time pairing token; alice pairs with mesh_pair');
  const gen = await cli(['pair', 'generate', '--dir', clusterDir, '--name', 'alice-laptop', '--slots', '1', '--capabilities', 'offload,handoff', '--expires', '1d']);
  const token = /azcp_1_[A-Za-z0-9_-]+/.exec(gen)[0];
  console.log(indent(`token: ${token.slice(0, 12)}… ${dim('(shown once; only its SHA-256 is kept by the controller)')}`));
  const paired = await alice.call('mesh_pair', { token });
  console.log(indent(paired.text));

  step(4, 'An end-to-end encrypted message each way (X3DH + Double Ratchet through the relay)');
  console.log(indent((await alice.call('mesh_send', { to: 'bob', message: 'Hi bob, can you check the quarterly numbers?' })).text));
  const got = await bob.call('mesh_inbox', { block_until_message: true, timeout_seconds: 30, mark_read: true });
  console.log(indent(`bob's inbox:\n${got.text.split('\n\nDiagnostics')[0]}`));
  console.log(indent(`evidence: ${got.mesh.messages?.map((m) => m.evidence).join(', ')}`));
  console.log(indent((await bob.call('mesh_send', { to: 'alice', message: 'Sure, on it.' })).text));
  const awaited = await alice.call('mesh_await', { senders: ['bob'], timeout_seconds: 30 });
  console.log(indent(`alice mesh_await → ${awaited.mesh.status}`));
  const reply = await alice.call('mesh_inbox', { mark_read: true });
  console.log(indent(`alice's inbox:\n${reply.text.split('\n\nDiagnostics')[0]}`));

  step(5, 'alice offloads a task with an input file to a sandbox of the cluster');
  const input = path.join(work, 'numbers.csv');
  fs.writeFileSync(input, 'quarter,revenue\nQ1,120\nQ2,135\nQ3,160\n');
  const sub = await alice.call('cloud_offload', { task: 'Summarise the quarterly numbers', files: [input], timeout_minutes: 5 });
  console.log(indent(sub.text.split('\n\n')[0]));
  console.log(indent('phases, as they happen:'));
  let after = 0;
  let last = {};
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const s = await alice.call('offload_status', { wait_seconds: 30, after_events: after });
    last = s.mesh;
    for (const e of (last.events ?? []).filter((x) => x.seq > after)) {
      console.log(indent(`${new Date(e.at_ms).toISOString().slice(11, 23)}  ${e.phase.padEnd(12)} ${e.text}`, '     '));
    }
    after = last.events_total ?? after;
    if (last.phase === 'done' || last.phase === 'error') break;
  }
  if (last.phase !== 'done') throw new Error(`the offload ended in ${last.phase}: ${last.error ?? ''}`);
  console.log(indent(`summary: ${last.summary}`));
  for (const f of last.outputs ?? []) {
    const full = path.join(work, 'alice', 'files', f.path);
    console.log(indent(`output ${f.name} (${f.size} bytes, sha256 ${f.sha256.slice(0, 16)}…) → ${full}`));
    console.log(indent(fs.readFileSync(full, 'utf8').trim(), '     │ '));
  }
  const notes = (await alice.call('offload_status', {})).text.split('\n')[0];
  console.log(indent(`offload_status: ${notes}`));

  step(6, 'Shut everything down');
  await cleanup(plugin);
  console.log(indent('agents stopped, cluster down' + (keep ? `, files kept in ${work}` : ', temp files removed')));
  console.log(`\n${bold('Demo complete.')}`);
} catch (e) {
  console.error(`\n❌ demo failed: ${e?.message ?? e}`);
  await cleanup({ stopAll: pluginMod?.stopAllNodes });
  process.exit(1);
}
