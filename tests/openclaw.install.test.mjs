// The package as users install it, into a REAL OpenClaw (openclaw 2026.9.6,
// Node 24) in a fresh, throw-away home (temp HOME and OPENCLAW_STATE_DIR):
//   1. `npm pack`: the tarball ships the plugin entry, the prebuilt component
//      (its JavaScript glue and core modules, and the component binary itself
//      for other hosts such as wasmtime), the `.d.ts` files the `exports` and
//      `types` fields name, the skill, the manifest, the NemoClaw preset, the
//      LICENSE; no tests, sources, build output or fixtures; no install
//      scripts. A TypeScript consumer type-checks against it.
//   2. the README's route: `openclaw plugins install <tgz> --force
//      --accept-capabilities`, `openclaw config set gateway.mode local`, the
//      plugin's config; `plugins inspect --runtime` says loaded; the Gateway
//      starts the node (state under $OPENCLAW_STATE_DIR/kars-mesh) and tools
//      answer through POST /tools/invoke (a failed call as OpenClaw's contract
//      has it).
//   3. from a directory, as NemoClaw's custom-image route does (the unpacked
//      tarball with its runtime dependencies: `npm install --omit=dev`):
//      `openclaw plugins install <dir>`, loaded, a tool answers.
//   4. `npm-pack:<tgz>`: the managed npm-project route (the same path as a
//      registry install): loaded.
// Install times are measured and reported (t.diagnostic). npm uses the
// clone's cache (.cache/npm, as scripts/setup.sh sets it) and prefers it to
// the network.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listFiles, makeOpenClawHome, NODE24, ROOT } from './harness/openclaw.mjs';
import { startServers } from './harness/servers.mjs';

const TOOLS = ['mesh_pair', 'cloud_offload', 'offload_status', 'offload_cancel', 'mesh_send', 'mesh_inbox', 'mesh_await', 'discover'];
const INSTALL_LIMIT_MS = 90_000; // "about 10 s" on a quiet machine; a hang fails well before the run timeout
const NPM_ENV = {
  npm_config_cache: path.join(ROOT, '.cache/npm'),
  npm_config_prefer_offline: 'true',
  npm_config_audit: 'false',
  npm_config_fund: 'false',
  npm_config_update_notifier: 'false',
};
const STARTED = /kars-mesh: mesh node started \((did:mesh:[0-9a-f]{32})\); state directory (\S+)/;

let srv;
let work;
let tgz;
const homes = [];
const gateways = [];
before(async () => {
  srv = await startServers();
  work = fs.mkdtempSync(path.join(tmpdir(), 'kars-install-'));
});
after(async () => {
  for (const g of gateways) await g.stop().catch(() => {});
  await srv?.stop();
  for (const h of homes) h.cleanup();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

function bareHome() {
  const h = makeOpenClawHome({ bare: true });
  homes.push(h);
  return h;
}

/** `npm pack` of this clone into `work` (once); the tarball's path. */
function pack() {
  if (tgz) return tgz;
  if (!fs.existsSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.wasm'))) throw new Error('js-host/gen/ missing: run `bash scripts/build.sh` first');
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...NPM_ENV } });
  tgz = path.join(work, JSON.parse(out)[0].filename);
  return tgz;
}

/** The tarball unpacked into a fresh directory; returns its `package/`. */
function unpack(name) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  execFileSync('tar', ['-xzf', pack(), '-C', dir]);
  return path.join(dir, 'package');
}

async function timed(fn) {
  const t0 = Date.now();
  const r = await fn();
  return [r, Date.now() - t0];
}

async function install(h, spec, t) {
  const [r, ms] = await timed(() => h.run(['plugins', 'install', spec, '--force', '--accept-capabilities'], { timeoutMs: 180_000, env: NPM_ENV }));
  assert.equal(r.code, 0, `plugins install ${spec} failed:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
  assert.match(r.stdout + r.stderr, /Installed plugin: kars-mesh/);
  const label = spec.startsWith('npm-pack:') ? 'npm-pack:<tgz>' : spec.endsWith('.tgz') ? '<tgz>' : '<dir>';
  t.diagnostic(`openclaw plugins install ${label}: ${(ms / 1000).toFixed(1)} s`);
  assert.ok(ms < INSTALL_LIMIT_MS, `install took ${ms} ms`);
  return r;
}

async function configure(h, pluginConfig) {
  for (const args of [
    ['config', 'set', 'gateway.mode', 'local'],
    ['config', 'set', 'plugins.entries.kars-mesh.config', JSON.stringify(pluginConfig), '--strict-json'],
  ]) {
    const r = await h.run(args);
    assert.equal(r.code, 0, `${args.join(' ')}:\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
  }
}

async function inspectLoaded(h, rootDir) {
  const r = await h.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.equal(r.code, 0, `inspect failed: ${r.stderr.slice(-3000)}`);
  const { plugin } = r.json;
  assert.equal(plugin.status, 'loaded', JSON.stringify(r.json.diagnostics));
  assert.deepEqual([...plugin.toolNames].sort(), [...TOOLS].sort());
  assert.equal(plugin.origin, 'global');
  if (rootDir) assert.equal(plugin.rootDir, rootDir);
  assert.equal(plugin.source, path.join(plugin.rootDir, 'js-host/plugin.js'));
  return plugin;
}

async function gatewayAnswers(h) {
  const g = await h.startGateway();
  gateways.push(g);
  assert.ok(await g.waitForLog(STARTED, 60_000), `the mesh node did not start:\n${g.logs().slice(-4000)}`);
  const [, , stateDir] = STARTED.exec(g.logs());
  assert.equal(stateDir, path.join(h.stateDir, 'kars-mesh'), 'the state lives under OpenClaw\'s state directory');
  const inbox = await g.invoke('mesh_inbox', {}, 30_000);
  assert.equal(inbox.status, 200, inbox.text.slice(0, 1000));
  assert.match(inbox.json.result.content[0].text, /^📭 /);
  const found = await g.invoke('discover', { capability: 'kars-mesh' }, 30_000);
  assert.equal(found.status, 200, found.text.slice(0, 1000));
  assert.ok(Array.isArray(found.json.result.details.mesh.agents), found.text.slice(0, 1000));
  const failed = await g.invoke('mesh_send', { to: 'bob' }, 30_000);
  assert.equal(failed.status, 400, failed.text.slice(0, 1000));
  assert.deepEqual(failed.json, { ok: false, error: { type: 'tool_error', message: '❌ mesh_send requires `message` content.' } });
  await g.stop();
  return g;
}

test('npm pack: the prebuilt component, its .d.ts files, the manifest, skill, preset, LICENSE and SECURITY.md; no tests or sources; no install scripts', { timeout: 120_000 }, (t) => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...NPM_ENV } });
  const info = JSON.parse(out)[0];
  t.diagnostic(`npm pack: ${info.entryCount} files, ${(info.size / 1024).toFixed(0)} KiB packed, ${(info.unpackedSize / 1024).toFixed(0)} KiB unpacked`);
  const files = info.files.map((f) => f.path);
  for (const f of [
    'package.json',
    'LICENSE',
    'README.md',
    // The README links to it three times (reporting a vulnerability, the threat model).
    'SECURITY.md',
    'openclaw.plugin.json',
    'js-host/plugin.js',
    'js-host/plugin.d.ts',
    'js-host/state-location.js',
    'js-host/gen/kars_mesh.component.js',
    'js-host/gen/kars_mesh.component.d.ts',
    'js-host/gen/interfaces/kars-mesh-engine.d.ts',
    'js-host/gen/kars_mesh.component.core.wasm',
    'js-host/gen/kars_mesh.component.wasm',
    'skills/mesh-federation/SKILL.md',
    'wit/world.wit',
    'bin/kars-mesh',
  ]) assert.ok(files.includes(f), `${f} not in the package`);
  // The NemoClaw preset ships when the clone has one.
  const presets = fs.existsSync(path.join(ROOT, 'nemoclaw')) ? listFiles(path.join(ROOT, 'nemoclaw')).map((f) => `nemoclaw/${f}`) : [];
  for (const f of presets) assert.ok(files.includes(f), `${f} not in the package`);
  assert.deepEqual(files.filter((f) => /^(src|tests|scripts|target|fuzz|bench|examples|docs|\.cache|node_modules)\/|fixtures|\.tgz$/.test(f)), []);

  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  for (const s of ['preinstall', 'install', 'postinstall', 'prepare', 'prepack', 'postpack']) assert.equal(pkg.scripts?.[s], undefined, `install script ${s}`);
  assert.equal(pkg.license, 'MIT');
  assert.match(fs.readFileSync(path.join(ROOT, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) \d{4} kars-mesh contributors\n/);
  assert.equal(typeof pkg.repository?.url, 'string');
  assert.equal(typeof pkg.homepage, 'string');
  assert.deepEqual(pkg.openclaw.extensions, ['./js-host/plugin.js']);
  assert.match(pkg.openclaw.compat.pluginApi, /^>=2026\.\d+\.\d+$/);
  assert.match(pkg.openclaw.install.minHostVersion, /^>=2026\.\d+\.\d+$/);
  // Every file package.json points at is in the tarball.
  const targets = [pkg.main, pkg.types, ...Object.values(pkg.bin), ...pkg.openclaw.extensions];
  for (const v of Object.values(pkg.exports)) targets.push(...(typeof v === 'string' ? [v] : Object.values(v)));
  for (const target of targets.map((x) => x.replace(/^\.\//, ''))) {
    if (target.includes('*')) {
      const [prefix, suffix] = target.split('*');
      assert.ok(files.some((f) => f.startsWith(prefix) && f.endsWith(suffix) && f.length > prefix.length + suffix.length), `nothing in the package matches exports target ${target}`);
    } else assert.ok(files.includes(target), `${target} (named in package.json) not in the package`);
  }
  // The component binary is a WebAssembly component (layer 1), not a core module.
  const head = fs.readFileSync(path.join(ROOT, 'js-host/gen/kars_mesh.component.wasm')).subarray(0, 8);
  assert.deepEqual([...head], [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
});

test('the shipped .d.ts files are wired: a TypeScript consumer of `kars-mesh` and `kars-mesh/component` type-checks', { timeout: 120_000 }, () => {
  const tscPath = path.join(ROOT, '.cache/openclaw/node_modules/typescript/bin/tsc');
  assert.ok(fs.existsSync(tscPath), `no TypeScript compiler at ${tscPath} (it comes with openclaw)`);
  const dir = path.join(work, 'consumer');
  fs.mkdirSync(path.join(dir, 'node_modules'), { recursive: true });
  fs.renameSync(unpack('for-consumer'), path.join(dir, 'node_modules/kars-mesh'));
  fs.writeFileSync(path.join(dir, 'package.json'), '{"type":"module","private":true}\n');
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022',
      types: ['node'], typeRoots: [path.join(ROOT, '.cache/openclaw/node_modules/@types')], skipLibCheck: false,
    },
    files: ['consumer.ts'],
  }));
  fs.writeFileSync(path.join(dir, 'consumer.ts'), `
import plugin, { MeshToolError, isToolFailure, toolOutcome, TOOL_NAMES, type MeshToolResult, type PluginApiLike } from 'kars-mesh';
import { instantiate, type Root } from 'kars-mesh/component';
const id: 'kars-mesh' = plugin.id;
const names: readonly string[] = TOOL_NAMES;
const e = new MeshToolError('❌ x', { expected: true });
const failed: boolean = isToolFailure({ content: [{ type: 'text', text: '❌ x' }], details: { mesh: { error: 'x' } } });
const ok: MeshToolResult = toolOutcome({ content: [{ type: 'text', text: 'ok' }], details: { mesh: {} } });
const register: (api: PluginApiLike) => void = plugin.register;
const inst: typeof instantiate = instantiate;
export type R = Root;
console.log(id, names, e.name, failed, ok, register, inst);
`);
  try {
    execFileSync(NODE24, [tscPath, '-p', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  }
});

test('openclaw plugins install <tgz> --force --accept-capabilities into a fresh OpenClaw home, gateway.mode local: loaded, the Gateway answers', { timeout: 420_000 }, async (t) => {
  const h = bareHome();
  const r = await install(h, pack(), t);
  assert.match(r.stdout + r.stderr, /Installing plugin dependencies/);
  const root = path.join(h.stateDir, 'extensions', 'kars-mesh');
  assert.ok(fs.existsSync(path.join(root, 'node_modules/ws/package.json')), 'the runtime dependency was installed');
  assert.ok(!fs.existsSync(path.join(root, 'node_modules/openclaw')), 'no private openclaw');
  const installed = JSON.parse(fs.readFileSync(path.join(h.stateDir, 'openclaw.json'), 'utf8'));
  assert.equal(installed.plugins.entries['kars-mesh'].enabled, true);
  await configure(h, { relay_url: srv.relayUrl, registry_url: srv.registryUrl, display_name: 'installed-claw' });
  await inspectLoaded(h, root);
  await gatewayAnswers(h);
});

test('from a directory (the unpacked tarball with `npm install --omit=dev`, as NemoClaw\'s custom image does): loaded, the Gateway answers', { timeout: 420_000 }, async (t) => {
  const dir = unpack('from-dir');
  const [, npmMs] = await timed(() => execFileSync('npm', ['install', '--omit=dev', '--omit=peer', '--ignore-scripts', '--no-package-lock'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...NPM_ENV } }));
  t.diagnostic(`npm install --omit=dev in the unpacked tarball: ${(npmMs / 1000).toFixed(1)} s`);
  const h = bareHome();
  await install(h, dir, t);
  const root = path.join(h.stateDir, 'extensions', 'kars-mesh');
  assert.ok(fs.existsSync(path.join(root, 'js-host/gen/kars_mesh.component.core.wasm')));
  await configure(h, { relay_url: srv.relayUrl, registry_url: srv.registryUrl });
  await inspectLoaded(h, root);
  await gatewayAnswers(h);
});

test('openclaw plugins install npm-pack:<tgz> (the managed npm project, as a registry install): loaded', { timeout: 300_000 }, async (t) => {
  const h = bareHome();
  await install(h, `npm-pack:${pack()}`, t);
  await configure(h, { relay_url: srv.relayUrl, registry_url: srv.registryUrl });
  const plugin = await inspectLoaded(h);
  assert.equal(plugin.rootDir, path.join(h.stateDir, 'npm/projects/kars-mesh/node_modules/kars-mesh'));
});
