// The NemoClaw network policy preset for kars-mesh (openclaw-host.md §13.1):
// what a NemoClaw/OpenShell sandbox must allow for the plugin inside the
// Gateway to reach one relay and one registry, and nothing more.
//
//   import { presetFor } from './preset.js';
//   const { yaml, warnings } = presetFor({ relayUrl: 'wss://relay.example.com', registryUrl: 'https://registry.example.com' });
//
// The relay is one WebSocket endpoint (the engine opens `<relay>/ws` with a
// GET upgrade and sends text frames only); the registry is a REST endpoint
// with exactly the methods and paths the engine's registry client sends
// (src/agent: register, prekeys, agent and bundle lookups, heartbeats,
// our own record's deletion, discovery). tests/nemoclaw.sandbox.test.mjs checks this list against the
// requests the engine really makes. User presets may not use `allowed_ips`
// and may not name a catch-all host, so neither appears; the binaries are the
// Gateway's (a plugin runs inside it).

import { isIPv4 } from 'node:net';

export const PRESET_NAME = 'kars-mesh';
export const POLICY_KEY = 'kars_mesh';
export const BINARIES = ['/usr/local/bin/openclaw', '/usr/local/bin/node'];

/** The registry requests of the engine: method and path, `*` standing for one path segment (a DID or a name). */
export const REGISTRY_RULES = [
  ['POST', '/v1/agents'], // register
  ['GET', '/v1/agents/*'], // an agent's record (a DID, or a kars sandbox's name)
  ['GET', '/v1/agents/*/prekeys'], // a peer's prekey bundle
  ['PUT', '/v1/agents/*/prekeys'], // our prekeys
  ['POST', '/v1/agents/*/heartbeat'], // every 60 s
  ['DELETE', '/v1/agents/*'], // our own record, signed: a new name or capabilities, a sandbox that stops
  ['GET', '/v1/discover'], // discovery and name lookups (?capability=…&limit=…)
];
/** The relay: the WebSocket upgrade and the text frames the engine sends on it. */
export const RELAY_METHODS = ['GET', 'WEBSOCKET_TEXT'];

const HOST_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const PATH_CHARS = /^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$/;

export class PresetError extends Error {}

/** `{host, port, tls, base}` of a relay or registry URL, or a PresetError naming the fix. */
function endpointOf(what, flag, raw, schemes) {
  let u;
  try {
    u = new URL(String(raw ?? '').trim());
  } catch {
    throw new PresetError(`${what} URL ${JSON.stringify(String(raw ?? ''))} is not a URL: pass ${flag} with e.g. ${schemes[1]}://${what}.example.com`);
  }
  const scheme = u.protocol.slice(0, -1);
  if (!schemes.includes(scheme)) {
    throw new PresetError(`${what} URL must start with ${schemes.map((s) => `${s}://`).join(' or ')}, not ${scheme}:// (${flag})`);
  }
  if (u.username || u.password) throw new PresetError(`${what} URL must not carry credentials (${flag})`);
  if (u.search || u.hash) throw new PresetError(`${what} URL must be a base URL without ?query or #fragment (${flag})`);
  const host = u.hostname.toLowerCase();
  if (host.startsWith('[')) {
    throw new PresetError(`${what} host ${host} is an IPv6 address: a NemoClaw preset names a host; use the ${what}'s DNS name (${flag})`);
  }
  if (host === '0.0.0.0' || host === '*' || !host.split('.').every((l) => HOST_LABEL.test(l))) {
    throw new PresetError(`${what} host ${JSON.stringify(host)} is not one exact DNS name: NemoClaw refuses catch-all and malformed hosts (${flag})`);
  }
  const secure = scheme === 'https' || scheme === 'wss';
  const port = u.port ? Number(u.port) : secure ? 443 : 80;
  let base = u.pathname.replace(/\/+$/, '');
  if (!PATH_CHARS.test(base || '/')) throw new PresetError(`${what} URL path ${JSON.stringify(u.pathname)} has characters a policy path cannot hold (${flag})`);
  return { host, port, secure, base };
}

/** Why NemoClaw may not take this host as it is (a warning, not an error: the file is still right). */
function hostWarning(what, host) {
  if (host === 'localhost' || host.endsWith('.localhost') || (isIPv4(host) && host.startsWith('127.'))) {
    return `${what} host ${host} is this machine's loopback: inside a NemoClaw sandbox it is the sandbox itself, and NemoClaw refuses loopback destinations. A service on the sandbox's host is reached as host.openshell.internal.`;
  }
  if (isIPv4(host) && /^(10\.|192\.168\.|172\.(1[6-9]|2\d|3[01])\.|100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.)/.test(host)) {
    return `${what} host ${host} is a private address: NemoClaw admits it only with \`--trusted-private-host ${host}\` on \`policy add\`.`;
  }
  return null;
}

const q = (s) => JSON.stringify(s); // a YAML double-quoted scalar (JSON strings are valid YAML)

/**
 * The preset for one relay and one registry.
 * @param {{relayUrl: string, registryUrl: string}} o
 * @returns {{yaml: string, warnings: string[], endpoints: Array<{host:string, port:number, protocol:string, rules:Array<[string,string]>}>}}
 * @throws {PresetError} a URL that cannot make a valid preset, with what to pass instead
 */
export function presetFor({ relayUrl, registryUrl }) {
  const relay = endpointOf('relay', '--relay', relayUrl, ['ws', 'wss', 'http', 'https']);
  const registry = endpointOf('registry', '--registry', registryUrl, ['http', 'https']);
  if (relay.host === registry.host && relay.port === registry.port) {
    throw new PresetError(
      `relay and registry are both ${relay.host}:${relay.port}: a NemoClaw endpoint has one protocol (websocket for the relay, rest for the registry), so they need different host names or ports`,
    );
  }
  // The relay's WebSocket path, as the engine derives it (src/mesh/link.rs ws_url).
  const wsPath = relay.base.endsWith('/ws') ? relay.base : `${relay.base}/ws`;
  const endpoints = [
    { ...relay, protocol: 'websocket', rules: RELAY_METHODS.map((m) => [m, wsPath]) },
    // The registry's base as the engine takes it (src/agent/mod.rs): a
    // pasted /v1 is the API's own prefix, not part of the base.
    { ...registry, protocol: 'rest', rules: REGISTRY_RULES.map(([m, p]) => [m, registry.base.replace(/\/v1$/, '') + p]) },
  ];
  const warnings = [hostWarning('relay', relay.host), hostWarning('registry', registry.host)].filter(Boolean);
  const lines = [
    '# NemoClaw network policy preset for the kars-mesh OpenClaw plugin',
    '# (generated by `kars-mesh preset`; see README.md, "NemoClaw").',
    '#',
    '# The relay: one WebSocket (upgrade GET, then text frames). The registry: the',
    '# REST methods and paths the kars-mesh engine sends, nothing else. No',
    '# allowed_ips, no catch-all host. The plugin runs inside the OpenClaw Gateway,',
    '# hence its binaries.',
    '#',
    '#   nemoclaw <sandbox> policy add --from-file kars-mesh.yaml --dry-run',
    '#   nemoclaw <sandbox> policy add --from-file kars-mesh.yaml --yes',
    '',
    'preset:',
    `  name: ${PRESET_NAME}`,
    `  description: ${q('kars-mesh: AgentMesh relay (WebSocket) and registry (REST) for the kars-mesh OpenClaw plugin')}`,
    '',
    'network_policies:',
    `  ${POLICY_KEY}:`,
    `    name: ${POLICY_KEY}`,
    '    endpoints:',
  ];
  for (const e of endpoints) {
    lines.push(`      - host: ${e.host}`, `        port: ${e.port}`, `        protocol: ${e.protocol}`, '        enforcement: enforce');
    if (e.secure) lines.push('        tls: terminate');
    lines.push('        rules:');
    for (const [m, p] of e.rules) lines.push(`          - allow: { method: ${m}, path: ${q(p)} }`);
  }
  lines.push('    binaries:', ...BINARIES.map((b) => `      - { path: ${b} }`));
  return {
    yaml: lines.join('\n') + '\n',
    warnings,
    endpoints: endpoints.map(({ host, port, protocol, rules }) => ({ host, port, protocol, rules })),
  };
}

/** The preset shipped in the package (nemoclaw/kars-mesh.yaml): placeholder hosts the user replaces, or regenerates. */
export const SHIPPED_PRESET_URLS = { relayUrl: 'wss://relay.example.com', registryUrl: 'https://registry.example.com' };
