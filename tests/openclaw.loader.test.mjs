// The plugin in the REAL OpenClaw loader (openclaw 2026.9.6 on Node 24, from
// scripts/setup-openclaw.sh), no mocks. Loaded from the packed npm artifact
// (tests/harness/openclaw.mjs stagePackage) and, once, from the clone itself
// as a developer links it: discovery from package.json
// openclaw.extensions, manifest and configSchema validation, the synchronous
// register(), the 8 tools, /offload, the message_sending hook, and the
// mesh-federation skill. Loading must start nothing (no state directory, no
// relay link).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { listFiles, makeOpenClawHome, ROOT } from './harness/openclaw.mjs';

const TOOLS = ['mesh_pair', 'cloud_offload', 'offload_status', 'offload_cancel', 'mesh_send', 'mesh_inbox', 'mesh_await', 'discover'];

const homes = [];
after(() => { for (const h of homes) h.cleanup(); });

function home(pluginConfig, opts = {}) {
  const h = makeOpenClawHome({ pluginConfig, ...opts });
  homes.push(h);
  return h;
}

function errorDiagnostics(diags) {
  return (diags ?? []).filter((d) => /error/i.test(String(d?.level ?? d?.severity ?? '')));
}

test('manifest lists the 8 tools and the code registers exactly those', () => {
  const manifest = JSON.parse(readFileSync(path.join(ROOT, 'openclaw.plugin.json'), 'utf8'));
  assert.equal(manifest.id, 'kars-mesh');
  assert.deepEqual([...manifest.contracts.tools].sort(), [...TOOLS].sort());
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  assert.deepEqual(pkg.openclaw.extensions, ['./js-host/plugin.js']);
  assert.ok(!pkg.scripts?.preinstall && !pkg.scripts?.install && !pkg.scripts?.postinstall, 'no install scripts');
});

test('openclaw plugins inspect --runtime: loaded, 8 tools, /offload, message_sending, nothing started', { timeout: 120_000 }, async () => {
  // Every key the configSchema offers (OpenClaw validates them before loading).
  const h = home((base) => ({
    relay_url: 'http://127.0.0.1:9',
    registry_url: 'http://127.0.0.1:9',
    state_dir: path.join(base, 'mesh-state'),
    display_name: 'loader-test',
    capabilities: ['analysis'],
    accept_sessions: 'all',
    timeouts: { start_seconds: 20, tool_seconds: 60 },
  }));
  const meshDir = path.join(h.base, 'mesh-state');

  const r = await h.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.equal(r.code, 0, `inspect failed: ${r.stderr.slice(-3000)}`);
  assert.ok(r.json, `inspect printed no JSON: ${r.stdout.slice(0, 2000)}`);
  const { plugin } = r.json;
  assert.equal(plugin.id, 'kars-mesh');
  assert.equal(plugin.status, 'loaded', JSON.stringify(r.json.diagnostics));
  assert.equal(plugin.source, path.join(h.pluginDir, 'js-host/plugin.js'));
  assert.deepEqual([...plugin.toolNames].sort(), [...TOOLS].sort());
  assert.deepEqual(errorDiagnostics(r.json.diagnostics), []);
  assert.deepEqual(r.json.commands, ['offload']);
  assert.ok(r.json.typedHooks.some((x) => x.name === 'message_sending'), JSON.stringify(r.json.typedHooks));
  // register() opened nothing: no state directory, no identity.
  assert.equal(existsSync(meshDir), false, 'inspect must not start the mesh node');
});

test('the packed artifact ships the entry, the built component, the skill and the manifest, and no sources or tests', { timeout: 60_000 }, () => {
  const h = home({});
  const files = listFiles(h.pluginDir).filter((f) => !f.startsWith('node_modules/'));
  for (const f of [
    'package.json',
    'openclaw.plugin.json',
    'js-host/plugin.js',
    'js-host/tools.js',
    'js-host/node-host.js',
    'js-host/core.js',
    'js-host/storage-fs.js',
    'js-host/gen/kars_mesh.component.js',
    'js-host/gen/kars_mesh.component.core.wasm',
    'skills/mesh-federation/SKILL.md',
  ]) assert.ok(files.includes(f), `${f} not in the package: ${files.join(', ')}`);
  assert.deepEqual(files.filter((f) => /^(src|tests|scripts|target|\.cache)\//.test(f)), []);
});

test('linked from the clone (plugins.load.paths = the working tree): inspect --runtime loads it', { timeout: 120_000 }, async () => {
  const h = home({ relay_url: 'http://127.0.0.1:9', registry_url: 'http://127.0.0.1:9' }, { pluginDir: ROOT });
  const r = await h.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.equal(r.code, 0, `inspect failed: ${r.stderr.slice(-3000)}`);
  assert.equal(r.json.plugin.status, 'loaded', JSON.stringify(r.json.diagnostics));
  assert.equal(r.json.plugin.source, path.join(ROOT, 'js-host/plugin.js'));
  assert.deepEqual([...r.json.plugin.toolNames].sort(), [...TOOLS].sort());
  // No state_dir: the default place (<OpenClaw state dir>/kars-mesh) is not made by loading.
  assert.equal(existsSync(path.join(h.stateDir, 'kars-mesh')), false, 'loading must not make the state directory');
});

test('a config value outside the schema blocks the plugin', { timeout: 120_000 }, async () => {
  const h = home({ relay_url: 'http://127.0.0.1:9', no_such_key: true });
  const r = await h.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.notEqual(r.code, 0, `an unknown config key must not load: ${r.stdout.slice(0, 1500)}`);
  assert.notEqual(r.json?.plugin?.status, 'loaded');
  const issue = (r.json?.issues ?? []).find((i) => i.path === 'plugins.entries.kars-mesh.config');
  assert.ok(issue, `no issue for the plugin config: ${r.stdout.slice(0, 1500)}`);
  assert.match(issue.message, /no_such_key/);
});

test('a display_name nobody could send to is refused when the config is read, not at the first tool call', { timeout: 120_000 }, async () => {
  // The node refuses such a name at start (src/agent/mod.rs); without a
  // pattern, `openclaw config set` took it and every tool call then failed.
  const bad = home({ relay_url: 'http://127.0.0.1:9', display_name: 'laptop claw' });
  let r = await bad.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.notEqual(r.json?.plugin?.status, 'loaded', r.stdout.slice(0, 1500));
  const issue = (r.json?.issues ?? []).find((i) => String(i.path).startsWith('plugins.entries.kars-mesh.config'));
  assert.ok(issue, `no issue for the plugin config: ${r.stdout.slice(0, 1500)}`);
  assert.match(`${issue.path} ${issue.message}`, /display_name/);
  const good = home({ relay_url: 'http://127.0.0.1:9', display_name: 'laptop-claw' });
  r = await good.run(['plugins', 'inspect', 'kars-mesh', '--runtime', '--json']);
  assert.equal(r.json?.plugin?.status, 'loaded', r.stdout.slice(0, 1500));
});

test('openclaw skills info mesh-federation: eligible, always', { timeout: 120_000 }, async () => {
  const h = home({});
  const r = await h.run(['skills', 'info', 'mesh-federation', '--json']);
  assert.equal(r.code, 0, r.stderr.slice(-3000));
  assert.ok(r.json, r.stdout.slice(0, 2000));
  assert.equal(r.json.name, 'mesh-federation');
  assert.equal(r.json.eligible, true);
  assert.equal(r.json.always, true);
  assert.equal(r.json.source, 'openclaw-extra');
  assert.equal(r.json.disabled, false);
});
