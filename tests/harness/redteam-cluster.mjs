// A local kars cluster for the red-team tests: `kars-mesh cluster up --detach`
// (the real relay and registry, the controller, sandboxes running the given
// `--exec` script), client nodes in this process, pairing through the
// operator CLI, and a teardown that leaves nothing running.
//
//   const c = await startRedteamCluster({ name: 'rt', execScript: '#!/bin/sh\n...' });
//   c.dir, c.controllerDid, c.controllerDir, c.sandboxesDir, c.relayUrl, c.registryUrl, c.work
//   const alice = await c.client('alice');           // registered and connected
//   await c.pair(alice, 'alice');                    // pair generate + mesh_pair
//   await c.pairings()                               // pair list (details.mesh.pairings)
//   await c.stop()
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './servers.mjs';
import { clusterPids, killAll, runCli, waitGone } from './cluster.mjs';
import { createNode } from '../../js-host/node-host.js';
import { killSandboxes } from '../../js-host/jobs.js';
import { followOffload } from './follow.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Pids of the sandbox processes under dir (from their job.json). */
export function sandboxPids(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).flatMap((n) => {
    try {
      return [JSON.parse(fs.readFileSync(path.join(dir, n, 'job.json'), 'utf8')).pid];
    } catch {
      return [];
    }
  });
}

/** Every regular file under dir (recursively), as absolute paths. */
export function allFiles(dir) {
  const out = [];
  const walk = (d) => {
    let entries;
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  walk(dir);
  return out;
}

export async function waitFor(fn, what, ms = 20_000, every = 200) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await sleep(every);
  }
  throw new Error(`timed out waiting for: ${what}`);
}

/**
 * @param {{name: string, execScript: (paths: {work: string, dir: string}) => string}} o
 *   execScript returns the text of the `--exec` shell script (paths baked in)
 */
export async function startRedteamCluster({ name, execScript }) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), `kars-rt-${name}-`));
  const dir = path.join(home, 'cluster');
  const work = path.join(home, 'work');
  fs.mkdirSync(work, { recursive: true });
  const script = path.join(home, 'task.sh');
  fs.writeFileSync(script, execScript({ work, dir }), { mode: 0o755 });
  const nodes = new Set();
  const seen = new Set();
  const cli = (args, opts = {}) => runCli(args, { home, timeoutMs: 60_000, ...opts });

  const up = await cli(['cluster', 'up', '--detach', '--dir', dir, '--name', `rt-${name}`,
    '--registry-port', String(await freePort()), '--relay-port', String(await freePort()), '--exec', script]);
  for (const p of clusterPids(dir)) seen.add(p);
  if (up.code !== 0) {
    fs.rmSync(home, { recursive: true, force: true });
    throw new Error(`cluster up failed:\n${up.stdout}\n${up.stderr}`);
  }
  const st = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8'));
  const c = {
    home,
    dir,
    work,
    script,
    relayUrl: st.relay.url,
    registryUrl: st.registry.url,
    controllerDid: st.controller.did,
    controllerDir: st.controller.stateDir,
    sandboxesDir: st.sandboxes?.dir ?? path.join(dir, 'sandboxes'),
    cli,
    async client(nodeName) {
      const n = await createNode({
        stateDir: fs.mkdtempSync(path.join(home, `${nodeName}-`)), relayUrl: c.relayUrl, registryUrl: c.registryUrl,
        name: nodeName, log: () => {},
      });
      nodes.add(n);
      await waitFor(async () => {
        const m = (await n.callTool('mesh_identity', {})).details.mesh;
        return m.registered && m.connected;
      }, `${nodeName} registered and connected`, 10_000, 100);
      return n;
    },
    async pair(node, pairingName, { slots = 1 } = {}) {
      const gen = await cli(['pair', 'generate', '--dir', dir, '--name', pairingName, '--slots', String(slots), '--capabilities', 'offload', '--expires', '1d', '--json']);
      assert.equal(gen.code, 0, `${gen.stdout}\n${gen.stderr}`);
      const token = JSON.parse(gen.stdout).details.mesh.token;
      const r = await node.callTool('mesh_pair', { token }, { timeoutMs: 40_000 });
      assert.match(r.content[0].text, /^✅ Paired successfully/, r.content[0].text);
    },
    async pairings() {
      const r = await cli(['pair', 'list', '--dir', dir, '--json']);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout).details.mesh.pairings;
    },
    async slotsUsed(pairingName) {
      return (await c.pairings()).find((p) => p.name === pairingName)?.slots_used;
    },
    sandboxNames() {
      try {
        return fs.readdirSync(c.sandboxesDir);
      } catch {
        return [];
      }
    },
    follow(node, opts) {
      return followOffload((a) => node.callTool('offload_status', a, { timeoutMs: 30_000 }), { timeoutMs: 40_000, ...opts });
    },
    async stop() {
      for (const n of nodes) await n.stop().catch(() => {});
      for (const p of sandboxPids(c.sandboxesDir)) seen.add(p);
      for (const p of clusterPids(dir)) seen.add(p);
      if (fs.existsSync(path.join(dir, 'cluster.json'))) await cli(['cluster', 'down', '--dir', dir], { timeoutMs: 30_000 }).catch(() => {});
      await killSandboxes(c.sandboxesDir, { graceMs: 1000 }).catch(() => {});
      killAll([...seen]);
      await waitGone([...seen], 5000);
      if (!process.env.KARS_KEEP_TMP) fs.rmSync(home, { recursive: true, force: true });
    },
  };
  return c;
}
