// The browser console, measured in one run (npm run bench:browser):
//   1. the component's download size: what `kars-mesh console` sends (brotli 11),
//      gzip -9 beside it, and raw;
//   2. cold start to "connected": a fresh Chromium profile opens the console
//      (a new identity: IndexedDB created, key made, core compiled, registered),
//      milliseconds from navigation start to the relay link's open;
//   3. round trip between a console agent and a Node agent, against the same
//      round trip between two Node agents (the CLI's host), both to the same
//      echo agent on the same real relay and registry.
// Writes bench/BROWSER-RESULTS.md. Needs Chromium (scripts/setup.sh).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServers } from '../tests/harness/servers.mjs';
import { launchProfile, browserMissing } from '../tests/harness/browser.mjs';
import { untilRegistered } from '../tests/harness/registered.mjs';
import { startConsoleServer, componentSizes } from '../js-host/console-server.js';
import { createNode } from '../js-host/node-host.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const COLD_RUNS = Number(process.env.KARS_BENCH_COLD ?? 3);
const ROUNDS = Number(process.env.KARS_BENCH_ROUNDS ?? 30);
const missing = browserMissing();
if (missing) {
  console.error(`bench:browser: ${missing}`);
  process.exit(3);
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, median: q(0.5), p90: q(0.9), min: s[0], max: s[s.length - 1] };
};
const ms = (x) => `${x.toFixed(1)} ms`;
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;

const dirs = [];
const tmp = (name) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `kars-bench-browser-${name}-`));
  dirs.push(d);
  return d;
};

const srv = await startServers();
const server = await startConsoleServer({ port: 0, relayUrl: srv.relayUrl, registryUrl: srv.registryUrl });
await server.warmed;
const nodes = [];
const profiles = [];
try {
  // ------------------------------------------------------------- 1. size
  const sizes = await componentSizes();
  const total = sizes.reduce((t, f) => ({ raw: t.raw + f.raw, gzip: t.gzip + f.gzip, brotli: t.brotli + f.brotli }), { raw: 0, gzip: 0, brotli: 0 });
  // What the page actually fetched, as the server sent it.
  const sent = { bytes: 0, files: 0 };

  // ------------------------------------------------------- 2. cold start
  const cold = [];
  const ready = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    const p = await launchProfile();
    profiles.push(p);
    const page = await p.context.newPage();
    if (i === 0) {
      page.on('response', async (r) => {
        if (r.url().includes('/js-host/')) {
          const size = Number((await r.allHeaders())['content-length'] ?? 0);
          sent.bytes += size;
          sent.files++;
        }
      });
    }
    await page.goto(`${server.url}?name=bench-cold-${i}`);
    await page.waitForFunction(() => globalThis.karsConsole?.metrics.connectedMs != null, null, { timeout: 60_000 });
    const m = await page.evaluate(() => globalThis.karsConsole.metrics);
    cold.push(m.connectedMs);
    ready.push(m.engineReadyMs);
    await p.close();
  }

  // ------------------------------------------------------------ 3. RTT
  const start = async (name) => {
    const n = await createNode({ stateDir: tmp(name), relayUrl: srv.relayUrl, registryUrl: srv.registryUrl, name, log: () => {} });
    nodes.push(n);
    return untilRegistered(n, name);
  };
  const echo = await start('bench-echo');
  let echoing = true;
  (async () => {
    while (echoing) {
      const r = await echo.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 30, mark_read: true, limit: 50 }).catch(() => null);
      for (const m of r?.details?.mesh?.messages ?? []) {
        await echo.callTool('mesh_send', { to: m.from, message: { type: 'message', content: `pong ${m.payload?.content ?? ''}` } }).catch(() => {});
      }
    }
  })();

  // Node <-> Node (the CLI's host).
  const cliAgent = await start('bench-cli');
  const nodeRtt = [];
  for (let i = 0; i < ROUNDS + 3; i++) {
    const t0 = performance.now();
    await cliAgent.callTool('mesh_send', { to: echo.did, message: `ping ${i}` });
    const r = await cliAgent.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 30, mark_read: true, from: echo.did });
    if (!r.details?.mesh?.messages?.length) throw new Error(`node round ${i}: no answer`);
    if (i >= 3) nodeRtt.push(performance.now() - t0); // the first rounds open the session
  }

  // Console <-> Node, the same echo, from the page's engine.
  const p = await launchProfile();
  profiles.push(p);
  const page = await p.context.newPage();
  await page.goto(`${server.url}?name=bench-console`);
  await page.waitForFunction(() => globalThis.karsConsole?.node && globalThis.karsConsole.metrics.connectedMs != null, null, { timeout: 60_000 });
  const consoleRtt = await page.evaluate(async ({ to, rounds }) => {
    const n = globalThis.karsConsole.node;
    const out = [];
    for (let i = 0; i < rounds + 3; i++) {
      const t0 = performance.now();
      await n.callTool('mesh_send', { to, message: `ping ${i}` });
      const r = await n.callTool('mesh_inbox', { block_until_message: true, timeout_seconds: 30, mark_read: true, from: to });
      if (!r.details?.mesh?.messages?.length) throw new Error(`console round ${i}: no answer`);
      if (i >= 3) out.push(performance.now() - t0);
    }
    return out;
  }, { to: echo.did, rounds: ROUNDS });
  const storeStats = await page.evaluate(() => globalThis.karsConsole.node.stats());
  echoing = false;

  const c = stats(cold);
  const r = stats(ready);
  const nr = stats(nodeRtt);
  const cr = stats(consoleRtt);
  const chromium = (await (await import('node:child_process')).execFileSync('/usr/bin/chromium', ['--version'], { encoding: 'utf8' })).trim();
  const lines = [
    '# Browser console: measured',
    '',
    `One run of \`npm run bench:browser\` (bench/browser.mjs) on ${os.cpus().length} cores (${os.cpus()[0]?.model?.trim()}), ${chromium}, Node ${process.versions.node}, the real relay and registry on loopback, ${new Date().toISOString().slice(0, 10)}.`,
    '',
    '## Component download size',
    '',
    '| file | raw | gzip -9 | brotli 11 |',
    '|---|---:|---:|---:|',
    ...sizes.map((f) => `| ${f.file} | ${kib(f.raw)} | ${kib(f.gzip)} | ${kib(f.brotli)} |`),
    `| **component** | **${kib(total.raw)}** | **${kib(total.gzip)}** | **${kib(total.brotli)}** |`,
    '',
    `What the first page load fetched under /js-host/ (component, host modules, console; as \`kars-mesh console\` sent it, brotli): ${kib(sent.bytes)} in ${sent.files} files.`,
    '',
    '## Cold start to "connected"',
    '',
    `A fresh Chromium profile per run (${COLD_RUNS} runs): a new identity, so the IndexedDB database and its state key are created, the core compiled, the identity made, the relay link opened. Milliseconds from navigation start:`,
    '',
    '| | median | min | max |',
    '|---|---:|---:|---:|',
    `| engine ready (identity open) | ${ms(r.median)} | ${ms(r.min)} | ${ms(r.max)} |`,
    `| relay link open ("connected") | ${ms(c.median)} | ${ms(c.min)} | ${ms(c.max)} |`,
    '',
    '## Round trip: console agent vs Node agent',
    '',
    `Each agent sends \`ping i\` to the same echo agent (a Node agent answering every message) and waits for the answer with \`mesh_inbox\` (block_until_message, mark_read); ${ROUNDS} rounds each after 3 warm-up rounds (the session is opened in those), in the same run, one after the other.`,
    '',
    '| pair | median | p90 | min | max |',
    '|---|---:|---:|---:|---:|',
    `| Node agent (the CLI's host, SQLite) ↔ echo | ${ms(nr.median)} | ${ms(nr.p90)} | ${ms(nr.min)} | ${ms(nr.max)} |`,
    `| console agent (Chromium Worker, IndexedDB) ↔ echo | ${ms(cr.median)} | ${ms(cr.p90)} | ${ms(cr.min)} | ${ms(cr.max)} |`,
    '',
    `The console's group commits over the run: ${storeStats.commits} commits for ${storeStats.events} events, ${storeStats.stores} stores, ${storeStats.commitMs.toFixed(0)} ms from the end of a batch to its commit landing (in the engine's Worker; IndexedDB \`durability: 'strict'\`).`,
    '',
  ];
  fs.writeFileSync(path.join(HERE, 'BROWSER-RESULTS.md'), lines.join('\n'));
  console.log(lines.join('\n'));
} finally {
  for (const p of profiles) await p.close();
  for (const n of nodes) await n.stop().catch(() => {});
  await server.close();
  await srv.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
}
