// The NemoClaw network policy preset (nemoclaw/kars-mesh.yaml, shipped in the
// npm package, and `kars-mesh preset` that makes it for a user's relay and
// registry) against every rule of NemoClaw's custom preset format
// (openclaw-host.md §13.1). That its endpoints, methods and paths are exactly
// the ones the engine uses is checked against the engine's real requests in
// tests/nemoclaw.sandbox.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs, { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BINARIES, PRESET_NAME, PresetError, REGISTRY_RULES, SHIPPED_PRESET_URLS, presetFor } from '../js-host/preset.js';
import { MAINTAINED_PRESETS, globMatches, parsePreset, presetProblems } from './harness/nemoclaw-preset.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SHIPPED = path.join(ROOT, 'nemoclaw/kars-mesh.yaml');
const BIN = path.join(ROOT, 'bin/kars-mesh');

test('the shipped preset satisfies every rule of the format and is what `kars-mesh preset` makes for the placeholder hosts', () => {
  const text = readFileSync(SHIPPED, 'utf8');
  assert.deepEqual(presetProblems(text, path.basename(SHIPPED)), []);
  assert.equal(text, presetFor(SHIPPED_PRESET_URLS).yaml, 'nemoclaw/kars-mesh.yaml is stale: regenerate it with bin/kars-mesh preset --relay wss://relay.example.com --registry https://registry.example.com --out nemoclaw/kars-mesh.yaml');
  assert.doesNotMatch(text.replace(/^#.*$/gm, ''), /allowed_ips|access:/);
  const doc = parsePreset(text);
  assert.equal(doc.preset.name, PRESET_NAME);
  assert.ok(!MAINTAINED_PRESETS.has(doc.preset.name));
  const [key] = Object.keys(doc.network_policies);
  const pol = doc.network_policies[key];
  assert.deepEqual(pol.binaries.map((b) => b.path).sort(), ['/usr/local/bin/node', '/usr/local/bin/openclaw']);
  assert.deepEqual(pol.endpoints, [
    {
      host: 'relay.example.com', port: 443, protocol: 'websocket', enforcement: 'enforce', tls: 'terminate',
      rules: [{ allow: { method: 'GET', path: '/ws' } }, { allow: { method: 'WEBSOCKET_TEXT', path: '/ws' } }],
    },
    {
      host: 'registry.example.com', port: 443, protocol: 'rest', enforcement: 'enforce', tls: 'terminate',
      rules: REGISTRY_RULES.map(([method, p]) => ({ allow: { method, path: p } })),
    },
  ]);
  // No rule is broader than one path: no `**`, no method wildcard.
  for (const e of pol.endpoints) for (const r of e.rules) {
    assert.notEqual(r.allow.method, '*');
    assert.doesNotMatch(r.allow.path, /\*\*/);
  }
});

test('the npm package ships the preset', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_update_notifier: 'false' } });
  const files = JSON.parse(out)[0].files.map((f) => f.path);
  assert.ok(files.includes('nemoclaw/kars-mesh.yaml'), files.join('\n'));
});

test('the checker catches every rule it enforces (it is not vacuous)', () => {
  const good = readFileSync(SHIPPED, 'utf8');
  const bad = (edit, file = 'kars-mesh.yaml') => presetProblems(edit(good), file).join('\n');
  assert.match(bad((t) => t, 'other.yaml'), /differs from the file name/);
  assert.match(bad((t) => t.replace('name: kars-mesh', 'name: Kars_Mesh'), 'Kars_Mesh.yaml'), /not a lowercase RFC 1123 label/);
  assert.match(bad((t) => t.replace('name: kars-mesh', 'name: slack'), 'slack.yaml'), /collides with a maintained/);
  assert.match(bad((t) => t.replace(/description: .*/, 'description: ""')), /description is missing/);
  assert.match(bad((t) => t.replace('  kars_mesh:', '  npm_yarn:')), /reserved for maintained presets/);
  assert.match(bad((t) => t.replace('        port: 443\n        protocol: rest', '        port: 443\n        allowed_ips: [10.0.0.1]\n        protocol: rest')), /allowed_ips is not allowed/);
  assert.match(bad((t) => t.replace('host: registry.example.com', 'host: "*"')), /catch-all/);
  assert.match(bad((t) => t.replace('host: registry.example.com', 'host: 0.0.0.0')), /catch-all/);
  assert.match(bad((t) => t.replace('host: registry.example.com', 'host: "*.com"')), /top-level domain/);
  assert.match(bad((t) => t.replace('protocol: rest', 'protocol: grpc')), /protocol grpc/);
  assert.match(bad((t) => t.replace(/enforcement: enforce/, 'enforcement: audit')), /enforcement must be enforce/);
  assert.match(bad((t) => t.replace(/tls: terminate/, 'tls: passthrough')), /tls must be terminate/);
  assert.match(bad((t) => t.replace('method: WEBSOCKET_TEXT', 'method: POST')), /not a websocket method/);
  assert.match(bad((t) => t.replace('method: PUT', 'method: FETCH')), /not a rest method/);
  assert.match(bad((t) => t.replace('path: "/v1/discover"', 'path: "v1/discover"')), /path must start with/);
  assert.match(bad((t) => t.replace('- { path: /usr/local/bin/node }', '- { path: node }')), /is not \{path: \/absolute\}/);
  assert.match(bad((t) => t.replace('        port: 443\n        protocol: websocket\n        enforcement: enforce\n        tls: terminate\n        rules:\n          - allow: { method: GET, path: "/ws" }\n          - allow: { method: WEBSOCKET_TEXT, path: "/ws" }', '        port: 443\n        access: full')), /access \(an L4 tunnel\)/);
});

test('kars-mesh preset: the user’s relay and registry, base paths, ports, TLS only for https/wss', () => {
  const p = presetFor({ relayUrl: 'https://mesh.corp.example/agentmesh', registryUrl: 'http://registry.corp.example:8082/reg/' });
  assert.deepEqual(presetProblems(p.yaml, 'kars-mesh.yaml'), []);
  const [relay, registry] = parsePreset(p.yaml).network_policies.kars_mesh.endpoints;
  assert.deepEqual([relay.host, relay.port, relay.tls, relay.rules.map((r) => r.allow.path)], ['mesh.corp.example', 443, 'terminate', ['/agentmesh/ws', '/agentmesh/ws']]);
  assert.deepEqual([registry.host, registry.port, registry.tls], ['registry.corp.example', 8082, undefined]);
  assert.deepEqual(registry.rules.map((r) => `${r.allow.method} ${r.allow.path}`), REGISTRY_RULES.map(([m, q]) => `${m} /reg${q}`));
  assert.deepEqual(p.warnings, []);
  // A relay URL that already ends in /ws is the WebSocket itself (src/mesh/link.rs ws_url).
  assert.deepEqual(parsePreset(presetFor({ relayUrl: 'wss://r.example/ws', registryUrl: 'https://g.example' }).yaml).network_policies.kars_mesh.endpoints[0].rules[0].allow.path, '/ws');
  assert.deepEqual(BINARIES, ['/usr/local/bin/openclaw', '/usr/local/bin/node']);

  // What NemoClaw would refuse is refused here, with what to pass instead.
  const refused = (relayUrl, registryUrl, re) => assert.throws(() => presetFor({ relayUrl, registryUrl }), (e) => e instanceof PresetError && re.test(e.message));
  refused('*', 'https://g.example', /relay URL "\*" is not a URL: pass --relay/);
  refused('wss://0.0.0.0', 'https://g.example', /catch-all/);
  refused('wss://r.example', 'https://[::1]:8082', /IPv6 address/);
  refused('wss://r.example', 'ftp://g.example', /registry URL must start with http:\/\/ or https:\/\//);
  refused('wss://u:pw@r.example', 'https://g.example', /must not carry credentials/);
  refused('wss://r.example', 'https://g.example/?x=1', /without \?query/);
  refused('https://same.example', 'https://same.example', /both same\.example:443: a NemoClaw endpoint has one protocol/);
  // Loopback and private addresses make a valid file NemoClaw will not apply as is: said, not hidden.
  const local = presetFor({ relayUrl: 'http://127.0.0.1:8083', registryUrl: 'http://10.1.2.3:8082' });
  assert.match(local.warnings[0], /relay host 127\.0\.0\.1 is this machine's loopback.*host\.openshell\.internal/);
  assert.match(local.warnings[1], /registry host 10\.1\.2\.3 is a private address: .*--trusted-private-host 10\.1\.2\.3/);

  // The command line prints the same file; bad input is a usage error naming the flag.
  const env = { ...process.env, KARS_MESH_RELAY: '', KARS_MESH_REGISTRY: '' };
  const ok = spawnSync(process.execPath, [BIN, 'preset', '--relay', 'wss://relay.example.com', '--registry', 'https://registry.example.com'], { encoding: 'utf8', env });
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout, presetFor(SHIPPED_PRESET_URLS).yaml);
  const none = spawnSync(process.execPath, [BIN, 'preset'], { encoding: 'utf8', env });
  assert.equal(none.status, 2);
  assert.match(none.stderr, /pass --relay URL and --registry URL/);
  const wild = spawnSync(process.execPath, [BIN, 'preset', '--relay', 'wss://0.0.0.0', '--registry', 'https://g.example'], { encoding: 'utf8', env });
  assert.equal(wild.status, 2);
  assert.match(wild.stderr, /relay host "0\.0\.0\.0" is not one exact DNS name: NemoClaw refuses catch-all/);
  // A registry URL pasted with the API's /v1 makes the same file (it made /v1/v1/agents).
  assert.equal(presetFor({ ...SHIPPED_PRESET_URLS, registryUrl: 'https://registry.example.com/v1/' }).yaml, presetFor(SHIPPED_PRESET_URLS).yaml);
  // --out: a ~ is the home directory; a place it cannot write is said plainly (it was an internal error, exit 70).
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-preset-'));
  try {
    const urls = ['--relay', 'wss://relay.example.com', '--registry', 'https://registry.example.com'];
    const tilde = spawnSync(process.execPath, [BIN, 'preset', ...urls, '--out=~/kars-mesh.yaml'], { encoding: 'utf8', env: { ...env, HOME: home } });
    assert.equal(tilde.status, 0, tilde.stderr);
    assert.equal(fs.readFileSync(path.join(home, 'kars-mesh.yaml'), 'utf8'), presetFor(SHIPPED_PRESET_URLS).yaml);
    const nowhere = spawnSync(process.execPath, [BIN, 'preset', ...urls, '--out', path.join(home, 'missing', 'kars-mesh.yaml')], { encoding: 'utf8', env });
    assert.equal(nowhere.status, 2, nowhere.stderr);
    assert.match(nowhere.stderr, /cannot write .*kars-mesh\.yaml: its directory .*missing does not exist\. Give --out a file in an existing directory/);
    assert.doesNotMatch(nowhere.stderr, /internal error|at .*\.js:\d+/);
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test('the path glob NemoClaw rules use: * is one segment, ** any', () => {
  assert.ok(globMatches('/v1/agents/*', '/v1/agents/did:mesh:00ff'));
  assert.ok(!globMatches('/v1/agents/*', '/v1/agents/did:mesh:00ff/prekeys'));
  assert.ok(globMatches('/v1/agents/*/prekeys', '/v1/agents/did%3Amesh%3A00ff/prekeys'));
  assert.ok(globMatches('/**', '/v1/agents/x/prekeys'));
  assert.ok(!globMatches('/v1/agents', '/v1/agents/x'));
});
