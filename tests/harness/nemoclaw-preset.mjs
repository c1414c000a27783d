// Every rule of NemoClaw's custom preset format (openclaw-host.md §13.1, from
// NVIDIA/NemoClaw's nemoclaw-blueprint/policies/presets/*.yaml and
// docs/network-policy/create-custom-policy-presets.mdx) as a checker:
//
//   const problems = presetProblems(yamlText, 'kars-mesh.yaml');   // [] when valid
//
// and the glob NemoClaw's path rules use (`*` one path segment, `**` any).
// The YAML is parsed by a real YAML 1.2 parser (js-yaml).
import yaml from 'js-yaml';

// Maintained presets of nemoclaw-blueprint/policies/presets/ and the tier
// names (docs/reference/network-policies.mdx): a custom preset may not take one.
export const MAINTAINED_PRESETS = new Set([
  'apt', 'brave', 'brew', 'cargo', 'claude-code', 'clawmetry', 'discord', 'docker', 'duckduckgo', 'firecrawl',
  'gemini', 'ghcr', 'github', 'gmail', 'go', 'goldrush', 'grafana', 'heygen', 'huggingface', 'jira',
  'local-inference', 'microsoft-teams', 'mnemo-cortex', 'nous-browser', 'npm', 'observability-otlp-local',
  'ollama', 'openclaw-diagnostics-otel-local', 'openclaw-pricing', 'otel-collector', 'outlook',
  'personal-open-internet', 'prometheus', 'public-reference', 'pypi', 'qdrant', 'shrike-security', 'sidclaw',
  'signal', 'slack', 'tavily', 'teams', 'telegram', 'weather', 'wechat', 'whatsapp',
]);
export const RESERVED_POLICY_KEYS = new Set(['npm_yarn', 'personal_open_internet']);
export const PROTOCOLS = new Set(['rest', 'websocket', 'jsonrpc', 'mcp']);
const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE', '*']);
const WS_METHODS = new Set(['GET', 'WEBSOCKET_TEXT', '*']);
const ENDPOINT_KEYS = new Set(['host', 'port', 'protocol', 'enforcement', 'tls', 'rules', 'deny_rules']);
const CATCH_ALL = new Set(['*', '**', '0.0.0.0', '0.0.0.0/0', '::', '::/0', '[::]']);
const RFC1123_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** An exact host (DNS name or IPv4) or a scoped `*.domain` wildcard; nothing broader. */
export function hostProblem(host) {
  if (typeof host !== 'string' || host === '') return 'host is missing';
  if (CATCH_ALL.has(host) || host.includes('/')) return `host ${host} is a catch-all or a range`;
  const name = host.startsWith('*.') ? host.slice(2) : host;
  const labels = name.split('.');
  if (labels.some((l) => !DNS_LABEL.test(l))) return `host ${host} is not an exact name or a *.domain wildcard`;
  if (host.startsWith('*.') && labels.length < 2) return `host ${host} is a wildcard over a whole top-level domain`;
  return null;
}

function ruleProblems(protocol, rules, where) {
  const out = [];
  if (!Array.isArray(rules) || rules.length === 0) return [`${where}: rules must be a non-empty list`];
  rules.forEach((r, i) => {
    const at = `${where}.rules[${i}]`;
    const keys = Object.keys(r ?? {});
    if (keys.length !== 1 || keys[0] !== 'allow' || typeof r.allow !== 'object' || r.allow === null) {
      out.push(`${at}: each rule is { allow: {...} }`);
      return;
    }
    const m = r.allow;
    const fields = Object.keys(m).sort().join(',');
    if (protocol === 'rest' || protocol === 'websocket') {
      if (fields !== 'method,path') out.push(`${at}: a ${protocol} rule has exactly method and path (has ${fields})`);
      const methods = protocol === 'rest' ? HTTP_METHODS : WS_METHODS;
      if (!methods.has(m.method)) out.push(`${at}: method ${m.method} is not a ${protocol} method (${[...methods].join(', ')})`);
      if (typeof m.path !== 'string' || !m.path.startsWith('/')) out.push(`${at}: path must start with /`);
    } else if (protocol === 'jsonrpc') {
      if (fields !== 'method') out.push(`${at}: a jsonrpc rule has method only`);
    } else if (protocol === 'mcp') {
      if (!('method' in m) || Object.keys(m).some((k) => !['method', 'tool', 'params'].includes(k))) out.push(`${at}: an mcp rule has method and optionally tool or params.name`);
    }
  });
  return out;
}

/**
 * Problems of a preset file against every rule of §13.1; [] when NemoClaw's
 * `policy add --from-file` would take it.
 * @param {string} text  the file's content
 * @param {string} fileName  its name (the preset's name must match it)
 */
export function presetProblems(text, fileName) {
  let doc;
  try {
    doc = yaml.load(text);
  } catch (e) {
    return [`not YAML: ${e.message}`];
  }
  const p = [];
  if (typeof doc !== 'object' || doc === null) return ['not a mapping'];
  const extra = Object.keys(doc).filter((k) => k !== 'preset' && k !== 'network_policies');
  if (extra.length) p.push(`top-level keys other than preset and network_policies: ${extra.join(', ')}`);
  const name = doc.preset?.name;
  if (typeof name !== 'string' || !RFC1123_LABEL.test(name)) p.push(`preset.name ${JSON.stringify(name)} is not a lowercase RFC 1123 label`);
  if (fileName.replace(/\.ya?ml$/, '') !== name) p.push(`preset.name ${name} differs from the file name ${fileName}`);
  if (MAINTAINED_PRESETS.has(name)) p.push(`preset.name ${name} collides with a maintained NemoClaw preset`);
  if (typeof doc.preset?.description !== 'string' || !doc.preset.description.trim()) p.push('preset.description is missing');
  const policies = doc.network_policies;
  if (typeof policies !== 'object' || policies === null || !Object.keys(policies).length) return [...p, 'network_policies is empty'];
  for (const [key, pol] of Object.entries(policies)) {
    const at = `network_policies.${key}`;
    if (RESERVED_POLICY_KEYS.has(key)) p.push(`${at}: the key ${key} is reserved for maintained presets`);
    if ('allowed_ips' in (pol ?? {})) p.push(`${at}: allowed_ips is not allowed in a user preset`);
    if (typeof pol?.name !== 'string' || !pol.name) p.push(`${at}.name is missing`);
    if (!Array.isArray(pol?.endpoints) || !pol.endpoints.length) p.push(`${at}.endpoints must be a non-empty list`);
    for (const [i, e] of (pol?.endpoints ?? []).entries()) {
      const ea = `${at}.endpoints[${i}]`;
      if ('allowed_ips' in e) p.push(`${ea}: allowed_ips is not allowed in a user preset`);
      if ('access' in e) p.push(`${ea}: access (an L4 tunnel) instead of a protocol with rules`);
      for (const k of Object.keys(e)) if (!ENDPOINT_KEYS.has(k)) p.push(`${ea}: unknown key ${k}`);
      const hp = hostProblem(e.host);
      if (hp) p.push(`${ea}: ${hp}`);
      if (!Number.isInteger(e.port) || e.port < 1 || e.port > 65535) p.push(`${ea}: port ${e.port} is not a port`);
      if (!PROTOCOLS.has(e.protocol)) p.push(`${ea}: protocol ${e.protocol} is not rest, websocket, jsonrpc or mcp`);
      if (e.enforcement !== 'enforce') p.push(`${ea}: enforcement must be enforce`);
      if (e.tls !== undefined && e.tls !== 'terminate') p.push(`${ea}: tls must be terminate`);
      p.push(...ruleProblems(e.protocol, e.rules, ea));
      if (e.deny_rules !== undefined) p.push(...ruleProblems(e.protocol, e.deny_rules, `${ea} (deny_rules)`));
    }
    if (!Array.isArray(pol?.binaries) || !pol.binaries.length) p.push(`${at}.binaries must be a non-empty list`);
    for (const b of pol?.binaries ?? []) {
      if (typeof b?.path !== 'string' || !b.path.startsWith('/') || Object.keys(b).length !== 1) p.push(`${at}.binaries: ${JSON.stringify(b)} is not {path: /absolute}`);
    }
  }
  return p;
}

/** The parsed preset (after presetProblems said it is valid). */
export const parsePreset = (text) => yaml.load(text);

/** NemoClaw's path glob: `**` any characters, `*` any characters but `/`. */
export function globMatches(pattern, path) {
  const re = pattern
    .split(/(\*\*|\*)/)
    .map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${re}$`).test(path);
}
