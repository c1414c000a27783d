// The `kars-mesh` command line: one engine tool call per invocation, on the
// same engine and state directory as the plugin (js-host/ENGINE.md).
//
//   import { main } from './cli.js';
//   process.exitCode = await main(process.argv.slice(2));
//
// Exit codes: 0 ok; 1 the tool reported an error; 2 usage error (also
// arguments the engine refused, details.mesh.bad_input); 3 the relay
// or registry could not be reached (or refused this agent, or the registry
// URL answers as something else), or the state directory is unusable.

import os from 'node:os';
import path from 'node:path';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { followMoved } from './state-location.js';
import { OPERATOR_SUMMARY, mainOperator, operatorUsage } from './cli-operator.js';
import { PRESET_SUMMARY, PRESET_USAGE, mainPreset } from './cli-preset.js';
import { isatty } from 'node:tty';
import { EXIT, cliText, isErrorResult, relayRefused, relayTrouble, resultText, stderrLog } from './cli-output.js';
import { UsageError, checkArguments, onlyFlags, parseArgv, resolveDir } from './flags.js';
import { nameProblem } from './agent-name.js';

export { EXIT };

const DEFAULT_RELAY = 'http://127.0.0.1:8083';
const DEFAULT_REGISTRY = 'http://127.0.0.1:8082';
const CALL_TIMEOUT_MS = 120_000;

const GLOBAL_HELP = `Global flags (before or after the command):
  --relay URL       relay base URL     (env KARS_MESH_RELAY, default ${DEFAULT_RELAY})
  --registry URL    registry base URL  (env KARS_MESH_REGISTRY, default ${DEFAULT_REGISTRY})
  --state DIR       state directory    (env KARS_MESH_STATE, absolute or ~/...;
                    default ~/.kars-mesh)
  --name NAME       display name, registered as a capability (remembered in
                    the state directory: later commands register under it)
  --json            print the whole tool result as JSON
  -v, --verbose     print the core's log lines to stderr (and the inbox counters)
  -h, --help        show help

Environment:
  KARS_MESH_RELAY_TOKEN  the relay's shared token, for a relay started with
                    AGENTMESH_RELAY_TOKEN (no flag: it would show in the
                    process list); sent only to the relay of --relay,
                    KARS_MESH_RELAY or the default, not to one a pairing
                    token names`;

const COMMANDS = {
  id: {
    tool: 'mesh_identity',
    usage: 'kars-mesh id',
    summary: "show this agent's DID and AMID",
    help: `Show this agent's identity (created on first use in the state directory).`,
    flags: [],
    positional: [],
    args: () => ({}),
  },
  register: {
    tool: 'mesh_register',
    usage: 'kars-mesh register',
    summary: 'register with the registry and upload prekeys',
    help: `Register this agent with the registry (if not yet registered) and upload
fresh prekeys so that other agents can open encrypted sessions to it.`,
    flags: [],
    positional: [],
    args: () => ({}),
  },
  send: {
    tool: 'mesh_send',
    usage: 'kars-mesh send <did> <text|json>',
    summary: 'send an end-to-end encrypted message',
    help: `Send a message to another agent. If the message parses as a JSON object it
is sent as is; otherwise it is sent as {"type":"message","content":<text>}.
Several words are joined with spaces; put -- before a message starting with -.
Give - as the message to read it from stdin (a file, a pipe, or typed and
ended with Ctrl-D: a command line holds at most 128 KiB, a message up to 1 MiB).
Exit code 0 once the relay has the message; 3 when the relay cannot be
reached or refuses this agent (the message is kept in the state directory
and goes out the next time kars-mesh runs there and reaches the relay).

Examples:
  kars-mesh send did:mesh:0123... "hello there"
  kars-mesh send did:mesh:0123... '{"type":"task","content":"summarise"}'
  kars-mesh send did:mesh:0123... - < report.md`,
    flags: [],
    positional: ['did', 'message'],
    rest: true, // the words of the message
    args: (pos) => {
      const text = pos.slice(1).join(' ');
      let message = { type: 'message', content: text };
      try {
        const parsed = JSON.parse(text);
        if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) message = parsed;
      } catch {
        /* plain text */
      }
      return { to: pos[0], message };
    },
  },
  inbox: {
    tool: 'mesh_inbox',
    usage: 'kars-mesh inbox [--wait SECONDS] [--from DID] [--limit N] [--all] [--peek]',
    synopsis: 'inbox [--wait SECONDS]',
    summary: 'read received messages',
    help: `Read unread messages. They are printed first and marked read afterwards
(by id), unless --peek, so an interrupted command never loses one.
  --wait SECONDS   if nothing is unread, wait up to SECONDS (at most 300)
  --from DID       only messages from this agent
  --limit N        at most N messages
  --all            also the messages already read (the newest N, see --limit)
  --peek           do not mark them read
The messages the relay kept for this agent are fetched first. Exit code 3
when the relay cannot be reached (or refuses this agent): what is shown is
then only what had arrived before.`,
    flags: ['wait', 'from', 'limit', 'all', 'peek'],
    positional: [],
    args: (_pos, f) => {
      const a = {};
      if (f.wait !== undefined) a.wait_seconds = f.wait;
      if (f.from !== undefined) a.from = f.from;
      if (f.limit !== undefined) a.limit = f.limit;
      if (f.all) a.unread_only = false;
      if (f.peek) a.peek = true;
      return a;
    },
  },
  discover: {
    tool: 'discover',
    usage: 'kars-mesh discover [capability] [--limit N]',
    synopsis: 'discover [capability]',
    summary: 'find agents offering a capability (none: kars-mesh agents)',
    help: `Find agents in the registry that offer a capability (every agent also
registers its name as one). Without a capability: the kars-mesh agents in the
registry and the peers this agent has sessions with.
  --limit N        at most N agents`,
    flags: ['limit'],
    positional: [],
    optional: ['capability'],
    args: (pos, f) => {
      const a = pos[0] === undefined ? {} : { capability: pos[0] };
      if (f.limit !== undefined) a.limit = f.limit;
      return a;
    },
  },
  offload: {
    tool: 'cloud_offload',
    usage: 'kars-mesh offload <task> [--file PATH]... [--timeout MINUTES] [--model NAME] [--force] [--no-follow]',
    synopsis: 'offload <task> [--file PATH]...',
    summary: 'run a task in a sandbox of the paired cluster and wait for the result',
    help: `Delegate a task to a sandbox of the cluster this agent is paired with
(pair first with \`kars-mesh pair-with\`). Input files travel end-to-end
encrypted to the sandbox; outputs come back into the private directory
<state>/files/incoming/<first 8 characters of the request id>/. The phases
are printed as they happen, until the offload is done (exit 0) or fails
(exit 1). The same task offloaded in the last 10 minutes starts nothing
(exit 1) unless --force. Ctrl-C stops watching only: the offload goes on;
\`kars-mesh offload-status --wait 600\` picks it up. Input files leave only
while this agent runs: ones not yet sent go when it runs again, and the
sandbox waits 10 minutes for them.
  --file PATH      an input file (repeat for more; at most 10, 31,454,208 bytes each)
  --timeout N      minutes the sandbox may run (default 30)
  --model NAME     inference model to ask for
  --force          run it even if the same task was offloaded in the last 10 minutes
  --no-follow      return once the input files have left (at once without --file)`,
    flags: ['file', 'timeout', 'model', 'force', 'no-follow'],
    positional: ['task'],
    rest: true, // the words of the task
    args: (pos, f) => {
      const a = { task: pos.join(' ') };
      if (f.file) a.files = f.file;
      if (f.timeout !== undefined) a.timeout_minutes = Number(f.timeout);
      if (f.model !== undefined) a.model = f.model;
      if (f.force) a.force = true;
      return a;
    },
    follow: (f) => !f['no-follow'],
  },
  'offload-status': {
    tool: 'offload_status',
    usage: 'kars-mesh offload-status [--wait SECONDS]',
    summary: 'show the active offload (with --wait: follow it until it ends)',
    help: `Show the active offload: phase, events, summary and output files.
  --wait SECONDS   follow the phases as they happen, for at most SECONDS`,
    flags: ['wait'],
    positional: [],
    args: () => ({}),
    follow: (f) => f.wait > 0,
  },
  'offload-cancel': {
    tool: 'offload_cancel',
    usage: 'kars-mesh offload-cancel',
    summary: 'cancel the active offload (the cluster stops its sandbox)',
    help: 'Cancel the active offload: the controller stops the sandbox and frees the slot.',
    flags: [],
    positional: [],
    args: () => ({}),
  },
  'pair-with': {
    tool: 'mesh_pair',
    usage: 'kars-mesh pair-with <token>',
    summary: 'pair this agent with a kars cluster (token from its operator)',
    help: `Pair this agent with a kars cluster, using the one-time azcp_1_ token the
cluster's operator made with \`kars-mesh pair generate\`. The relay and registry
are taken from the token unless --relay/--registry say otherwise. Use - as the
token to read it from stdin: it then never shows in the process list or in
your shell's history (given as an argument, kars-mesh hides it from the
process list as soon as it starts). KARS_MESH_RELAY_TOKEN is sent only to a
relay you name (--relay or KARS_MESH_RELAY), never to one the token names.

Examples:
  kars-mesh --state ~/.kars-mesh pair-with - < token.txt
  kars-mesh --state ~/.kars-mesh pair-with -      (paste it, then Enter and Ctrl-D)`,
    flags: [],
    positional: ['token'],
    args: (pos) => ({ token: pos[0] }),
  },
};

/**
 * The relay and registry URLs a pairing token names, read by the engine's own
 * token parser (toolkit `pairing-token-parse`, the one mesh_pair uses; it
 * changes nothing). {} when the engine refuses the token: mesh_pair then says why.
 */
export async function tokenUrls(token) {
  const { loadCore } = await import('./core.js');
  const { toolkit } = await loadCore();
  let payload;
  try {
    payload = JSON.parse(toolkit.pairingTokenParse(String(token ?? '')));
  } catch {
    return {};
  }
  const str = (v) => (typeof v === 'string' && v ? v : undefined);
  return { relayUrl: str(payload.relay_url), registryUrl: str(payload.registry_url) };
}

// flag name -> { value: needs a value?, multi: may repeat?, global: allowed with every command? }
const FLAGS = {
  relay: { value: true, global: true },
  registry: { value: true, global: true },
  state: { value: true, global: true },
  name: { value: true, global: true },
  json: { value: false, global: true },
  verbose: { value: false, global: true },
  help: { value: false, global: true },
  version: { value: false, global: true },
  wait: { value: true },
  from: { value: true },
  limit: { value: true },
  all: { value: false },
  peek: { value: false },
  file: { value: true, multi: true },
  timeout: { value: true },
  model: { value: true },
  force: { value: false },
  'no-follow': { value: false },
};
const SHORT = { h: 'help', v: 'verbose' };
const GLOBAL_FLAGS = Object.keys(FLAGS).filter((f) => FLAGS[f].global);

function mainUsage() {
  const synopsis = (c) => c.synopsis ?? c.usage.slice('kars-mesh '.length);
  const entries = [...Object.values(COMMANDS).map((c) => [synopsis(c), c.summary]), ...OPERATOR_SUMMARY, CONSOLE_SUMMARY, ...PRESET_SUMMARY];
  const width = Math.max(...entries.map(([s]) => s.length));
  const lines = entries.map(([s, summary]) => `  ${s.padEnd(width)}  ${summary}`);
  return `Usage: kars-mesh [flags] <command> [args]

kars-mesh talks to other agents of an AgentMesh (relay + registry) with
end-to-end encryption, using the identity kept in the state directory.

Commands:
${lines.join('\n')}
  help [command]${' '.repeat(Math.max(0, width - 'help [command]'.length))}  help for a command

${GLOBAL_HELP}

Exit codes: 0 ok, 1 the mesh reported an error, 2 usage error (also an
argument the mesh refused, such as a malformed DID),
3 relay/registry unreachable (or refusing this agent, or not at that URL)
or state directory problem.`;
}

const isCommand = (name) => Object.hasOwn(COMMANDS, name);

function commandUsage(name) {
  const c = COMMANDS[name];
  return `Usage: ${c.usage} [flags]\n\n${c.help}\n\n${GLOBAL_HELP}`;
}

/** Parse argv into { command, positional, flags } (js-host/flags.js). Throws UsageError. */
export function parseArgs(argv) {
  const { words, flags } = parseArgv(argv, { flags: FLAGS, short: SHORT });
  return { command: words[0], positional: words.slice(1), flags };
}

/**
 * An endpoint URL as given, trimmed. The registry takes http(s) only; neither
 * may carry a user name or password (refused without quoting the URL, which
 * holds it: kars-mesh never sends URL credentials, and Node's fetch refuses
 * them quoting the whole URL).
 */
function checkUrl(flag, value, command, schemes = ['http:', 'https:', 'ws:', 'wss:']) {
  const v = String(value).trim();
  let u;
  try {
    u = new URL(v);
  } catch {
    throw new UsageError(`${flag} must be a URL like ${schemes.includes('ws:') ? 'http://127.0.0.1:8083' : 'http://127.0.0.1:8082'}, not ${JSON.stringify(v)}`, command);
  }
  if (u.username || u.password) {
    throw new UsageError(`${flag} carries a user name or password (user:password@host): remove them; kars-mesh never sends URL credentials (a relay token goes in KARS_MESH_RELAY_TOKEN)`, command);
  }
  if (!schemes.includes(u.protocol)) {
    const want = schemes.includes('ws:') ? 'an http(s) or ws(s) URL' : 'an http(s) URL';
    throw new UsageError(`${flag} must be ${want}, not ${JSON.stringify(v)}`, command);
  }
  return v;
}

/** A number flag within [min, max]; the refusal names the command whose usage follows it. */
function numberFlag(flag, value, command, { integer = false, min = 0, max = Infinity } = {}) {
  const n = Number(value);
  if (value === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    const range = max === Infinity ? `≥ ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${flag} must be a ${integer ? 'whole ' : ''}number ${range}, not ${JSON.stringify(value)}`, command);
  }
  return n;
}

/** Build the invocation from argv and the environment. Throws UsageError; returns { help }, { version } or { run }. */
export function plan(argv, env = process.env) {
  const { command, positional, flags } = parseArgs(argv);
  if (command === 'help') {
    const topic = positional[0];
    if (topic === undefined) return { help: mainUsage() };
    if (OPERATOR_GROUPS.includes(topic)) return { help: operatorUsage(topic) };
    if (topic === 'console') return { consoleHelp: true };
    if (topic === 'preset') return { help: PRESET_USAGE };
    if (!isCommand(topic)) throw new UsageError(`unknown command "${topic}"`);
    return { help: commandUsage(topic) };
  }
  if (flags.version) return { version: true };
  if (command === undefined) {
    if (flags.help) return { help: mainUsage() };
    throw new UsageError('no command given');
  }
  if (!isCommand(command)) throw new UsageError(`unknown command "${command}"`);
  const spec = COMMANDS[command];
  if (flags.help) return { help: commandUsage(command) };
  onlyFlags(flags, [...GLOBAL_FLAGS, ...spec.flags], command, command);
  checkArguments(positional, { required: spec.positional, optional: spec.optional, rest: spec.rest }, command);
  if (spec.positional.length && positional.slice(0, spec.positional.length).some((p) => p === '')) {
    throw new UsageError(`empty ${spec.positional.map((p) => `<${p}>`).join(' or ')}`, command);
  }
  const parsed = { ...flags };
  // inbox waits at most 300 s (its help says so): a larger number was taken
  // and quietly cut to it. offload-status follows for as long as asked.
  if (flags.wait !== undefined) parsed.wait = numberFlag('--wait', flags.wait, command, { max: command === 'inbox' ? 300 : Infinity });
  // --limit 0 was taken and quietly meant the engine's default.
  if (flags.limit !== undefined) parsed.limit = numberFlag('--limit', flags.limit, command, { integer: true, min: 1 });
  // The sandbox's bounds (src/wire/limits.rs MAX_TIMEOUT_MINUTES), said before anything starts.
  if (flags.timeout !== undefined) parsed.timeout = numberFlag('--timeout', flags.timeout, command, { min: 1, max: 24 * 60 });

  if (command === 'pair-with' && positional[0] === '-') positional[0] = tokenInText(readStdin());
  // send <did> -: the message from stdin, as it is (one final newline off).
  if (command === 'send' && positional.length === 2 && positional[1] === '-') {
    // isatty, not process.stdin.isTTY: opening process.stdin makes a pipe
    // non-blocking, and the read below then fails with EAGAIN.
    if (isatty(0)) process.stderr.write('kars-mesh send: type the message, then Enter and Ctrl-D\n');
    positional[1] = readStdin({ trim: false, what: 'the message' }).replace(/\r?\n$/, '');
    // `gen | kars-mesh send bob -` with gen failing: not an empty message.
    if (!positional[1].trim()) throw new UsageError('the message read from stdin is empty: nothing was sent', command);
  }
  if (command === 'pair-with') positional[0] = unquoteToken(positional[0]);
  // pair-with: the token says where its cluster is, and only the engine reads
  // tokens (asynchronously), so main() settles the node with run.nodeFor(urls).
  const nodeFor = (fromToken) => nodeSettings(flags, env, command, fromToken);
  const node = command === 'pair-with' ? { nodeFor } : { node: nodeFor({}) };

  return {
    run: {
      command,
      tool: spec.tool,
      args: spec.args(positional, parsed),
      json: !!flags.json,
      verbose: !!flags.verbose,
      waitSeconds: parsed.wait ?? 0,
      follow: spec.follow ? spec.follow(parsed) : false,
      // inbox: mark exactly the printed entries read, after printing them.
      markAfter: command === 'inbox' && !flags.peek,
      ...node,
    },
  };
}

/**
 * The node's state directory, name, relay and registry. Each URL comes from
 * its flag, else the pairing token (pair-with), else the environment, else
 * what pair-with remembered for this state directory, else the default.
 */
function nodeSettings(flags, env, command, fromToken) {
  // The default follows ~/.kars-mesh/MOVED.json to where the OpenClaw plugin
  // imported it (state-location.js): the CLI and the Gateway keep one
  // identity and take turns through its lock.
  const fromEnv = flags.state === undefined ? env.KARS_MESH_STATE?.trim() : undefined;
  // The OpenClaw plugin reads a relative KARS_MESH_STATE from the home
  // directory, a command would read it from wherever it runs: two identities.
  if (fromEnv && !path.isAbsolute(fromEnv) && !/^~(?=$|[\\/])/.test(fromEnv)) {
    throw new UsageError(
      `KARS_MESH_STATE=${JSON.stringify(fromEnv)} is a relative path: a command would take it from its working directory and the OpenClaw plugin from the home directory, two different identities. Set it to an absolute path (or ~/${fromEnv}), or pass --state DIR`,
      command,
    );
  }
  const stateRaw = flags.state ?? (fromEnv || followMoved(path.join(os.homedir(), '.kars-mesh')));
  if (!stateRaw) throw new UsageError('--state needs a directory', command);
  const stateDir = resolveDir(stateRaw);
  // A local cluster's directory is not an agent's: an identity made there
  // would sit beside the controller's (cluster.js, clusterPaths).
  if (existsSync(path.join(stateDir, 'controller', 'state.key')) || existsSync(path.join(stateDir, 'cluster.json'))) {
    throw new UsageError(`${stateDir} is a kars-mesh cluster's directory (kars-mesh cluster up --dir), not an agent's state: give the agent its own --state DIR (default ~/.kars-mesh)`, command);
  }
  // After pair-with, the cluster's relay and registry are remembered for this
  // state directory (flags and environment still win).
  const remembered = rememberedEndpoints(stateDir);
  const paired = command === 'pair-with' ? {} : remembered;
  const from = {};
  const endpoint = (flag, envName, fallback) => {
    const key = `${flag}Url`;
    const [source, value] =
      flags[flag] !== undefined ? [`--${flag}`, flags[flag]]
      : fromToken[key] ? [`the token's ${flag}_url`, fromToken[key]]
      : env[envName] ? [envName, env[envName]]
      : paired[key] ? [`${ENDPOINTS_FILE} in the state directory (written by pair-with)`, paired[key]]
      : ['the default', fallback];
    from[flag] = source;
    return checkUrl(source, value, command, flag === 'registry' ? ['http:', 'https:'] : undefined);
  };
  const relayUrl = endpoint('relay', 'KARS_MESH_RELAY', DEFAULT_RELAY);
  const registryUrl = endpoint('registry', 'KARS_MESH_REGISTRY', DEFAULT_REGISTRY);
  // KARS_MESH_RELAY_TOKEN goes only to a relay the user named: whoever wrote
  // a pasted pairing token chose its relay_url, and would otherwise be sent
  // the user's relay secret (and keep getting it through endpoints.json).
  const relayTokenAllowed =
    from.relay === '--relay' || from.relay === 'KARS_MESH_RELAY' || from.relay === 'the default'
      ? true
      : fromToken.relayUrl && flags.relay === undefined
        ? sameRelay(env.KARS_MESH_RELAY, relayUrl)
        : paired.relayTokenAllowed === true;
  if (flags.name !== undefined && !flags.name.trim()) throw new UsageError('--name must not be empty', command);
  // Other agents send to it by name: one word (the engine refuses others too).
  if (flags.name !== undefined && nameProblem(flags.name)) {
    throw new UsageError('--name is what other agents send to: one word of at most 128 characters, such as alice or laptop-claw', command);
  }
  return { stateDir, relayUrl, registryUrl, name: flags.name, from, endpoints: remembered, relayTokenAllowed };
}

/**
 * Two URLs that name the same relay, as the core takes them (src/pairing/
 * client.rs same_place, src/mesh/link.rs ws_url): ws is http, wss is
 * https, and the bare address, `/` and `/ws` are one place.
 */
export function sameRelay(a, b) {
  const place = (v) => {
    try {
      const u = new URL(String(v).trim());
      const scheme = { 'ws:': 'http:', 'wss:': 'https:' }[u.protocol] ?? u.protocol;
      return `${scheme}//${u.host}${u.pathname.replace(/\/+$/, '').replace(/\/ws$/, '')}`;
    } catch {
      return null;
    }
  };
  const [x, y] = [a && place(a), b && place(b)];
  return !!x && x === y;
}

/** Where the CLI reads the relay token from, for the engine's 4003 text. */
const RELAY_TOKEN_HINT =
  "run kars-mesh with the environment variable KARS_MESH_RELAY_TOKEN set to the relay's AGENTMESH_RELAY_TOKEN";

/** Which flag or variable sets an endpoint, and where this one came from. */
function endpointHint(node, which) {
  const flag = which === 'relay' ? '--relay URL or KARS_MESH_RELAY' : '--registry URL or KARS_MESH_REGISTRY';
  const url = which === 'relay' ? node.relayUrl : node.registryUrl;
  return `the ${which} URL ${url} came from ${node.from?.[which] ?? 'the settings'}; give the right one with ${flag}`;
}

const ENDPOINTS_FILE = 'endpoints.json';

/** Write endpoints.json (pair-with's cluster, and whether the relay token may go there); its path. */
function rememberEndpoints(stateDir, { relayUrl, registryUrl, relayTokenAllowed }) {
  const file = path.join(stateDir, ENDPOINTS_FILE);
  const text = JSON.stringify({ relay_url: relayUrl, registry_url: registryUrl, relay_token_allowed: relayTokenAllowed === true }, null, 2);
  writeFileSync(`${file}.tmp`, `${text}\n`, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
  return file;
}

/**
 * The relay and registry remembered by a successful pair-with, if any, and
 * the `problem` of a file that is there but cannot be used (said, not
 * passed over: the agent would quietly fall back to the defaults).
 */
function rememberedEndpoints(stateDir) {
  const file = path.join(stateDir, ENDPOINTS_FILE);
  let j;
  try {
    j = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    if (e?.code === 'ENOENT') return {};
    return { problem: `${file} cannot be read (${e?.code ?? e?.message}); the relay and registry come from flags, the environment or the defaults. Run pair-with again, or remove the file` };
  }
  const url = (v) => (typeof v === 'string' ? v : undefined);
  // relay_token_allowed: pair-with was told this relay by the user (not only
  // by the token), so KARS_MESH_RELAY_TOKEN may go to it.
  const found = { relayUrl: url(j?.relay_url), registryUrl: url(j?.registry_url), relayTokenAllowed: j?.relay_token_allowed === true };
  if (!found.relayUrl || !found.registryUrl) {
    found.problem = `${file} does not name both relay_url and registry_url; what it lacks comes from flags, the environment or the defaults. Run pair-with again, or remove the file`;
  }
  return found;
}

/**
 * A token as users paste it: inside quotes (from a chat or a document,
 * straight or curly) and with spaces around. The engine's own reader copes
 * with that; the URLs the CLI reads from the token did not, so the node
 * started on the default relay and mesh_pair blamed the token's relay_url.
 */
export function unquoteToken(raw) {
  let t = String(raw ?? '').trim();
  for (;;) {
    const m = /^(["'`\u2018\u201c])([\s\S]*)(["'`\u2019\u201d])$/.exec(t);
    if (!m) return t;
    t = m[2].trim();
  }
}

/**
 * The token in what was read from stdin: `pair generate > token.txt` writes
 * a line about the pairing and one about the token before the token itself,
 * and a token wrapped over lines (an e-mail) comes back whole. Text with no
 * azcp_ token is passed on as it is, for the engine to name the problem.
 */
export function tokenInText(text) {
  const at = text.search(/azcp_\d+_/);
  if (at < 0) return text;
  const lines = text.slice(at).split(/\r?\n/).map((l) => l.trim());
  const first = lines[0].match(/^azcp_[A-Za-z0-9_\-=.+/]+/)[0];
  if (first !== lines[0]) return first;
  // Lines after it join only while that makes a token whose payload reads
  // (a wrapped token): a word after a whole token ("Cheers") is not part of it.
  let joined = first;
  for (const l of lines.slice(1)) {
    if (tokenReads(joined) || !/^[A-Za-z0-9_\-=.+/]+$/.test(l)) break;
    joined += l;
  }
  return tokenReads(joined) ? joined : first;
}

/** An azcp_<n>_ token whose payload is base64 (either alphabet) of a JSON object. */
function tokenReads(token) {
  const body = token.replace(/^azcp_\d+_/, '').replace(/-/g, '+').replace(/_/g, '/');
  try {
    const v = JSON.parse(Buffer.from(body, 'base64').toString('utf8'));
    return v !== null && typeof v === 'object';
  } catch {
    return false;
  }
}

function readStdin({ trim = true, what = 'the token' } = {}) {
  try {
    const text = readFileSync(0, 'utf8');
    return trim ? text.trim() : text;
  } catch (e) {
    throw new UsageError(`cannot read ${what} from stdin: ${e.message}`, what === 'the token' ? 'pair-with' : 'send');
  }
}

const OPERATOR_GROUPS = ['cluster', 'pair'];
/** `kars-mesh console` (js-host/console-server.js): the browser console's server. */
const CONSOLE_SUMMARY = ['console [--port N]', 'serve the browser agent console on 127.0.0.1'];
const MAIN_VALUE_FLAGS = new Set(GLOBAL_FLAGS.filter((f) => FLAGS[f].value).map((f) => `--${f}`));

/** The first positional argument of argv (skipping the global flags and their values). */
function firstPositional(argv) {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') return { index: i + 1, value: argv[i + 1] };
    if (MAIN_VALUE_FLAGS.has(a)) {
      i++;
      continue;
    }
    if (a === '-' || !a.startsWith('-')) return { index: i, value: a };
  }
  return { index: -1, value: undefined };
}

function version() {
  try {
    return JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
  } catch {
    return 'unknown';
  }
}

/** Commands that queue messages for other agents. */
const SENDS = new Set(['send', 'offload', 'offload-cancel']);

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

/** How long `id` waits for this run's registration and relay link to settle. */
const ID_SETTLE_MS = 3_000;

/**
 * `id` answers from a process that has just started: until the registry has
 * answered and the relay has accepted (or refused) this agent, it would say
 * "Registered: not yet" and "Relay: connecting" about an agent registered
 * long ago. Waits (bounded) for both, or for a network failure.
 */
async function settleIdentity(node, signal, failuresBefore, ms = ID_SETTLE_MS) {
  const until = Date.now() + ms;
  while (!signal.aborted && Date.now() < until) {
    const s = await nodeStatus(node, signal);
    if (!s || node.ioFailures > failuresBefore) return;
    if (s.registered && (s.connected || s.relay_problem || s.relay_error)) return;
    await sleep(50);
  }
}

/** `id`'s lines about what did not settle in time, as a shell user can act on them. */
function unsettledIdText(text) {
  return text
    .replace(/^Registered: not yet$/m, 'Registered: not confirmed in this run (the registry has not answered; kars-mesh register waits for it and says why)')
    .replace(/^Relay: connecting$/m, 'Relay: not connected yet (kars-mesh inbox connects, and says why if it cannot)');
}

/** The node's state (mesh_identity's details: connected, relay_problem, relay_error, outbox), or null. */
async function nodeStatus(node, signal) {
  const r = await node.callTool('mesh_identity', {}, { signal, timeoutMs: 5_000 }).catch(() => null);
  return r?.details?.mesh ?? null;
}

/**
 * Wait (bounded, `ms`) until every queued message is confirmed by its
 * recipient, or until the relay has refused this agent (waiting does not
 * cure a wrong token). `receiptMs`: once the relay connection is up (what
 * was queued goes out on it), how long to wait for receipts. A `send` waits
 * 1 s: a recipient that is online confirms within milliseconds, and one that
 * is not never will while this runs (the relay keeps the message for it),
 * so every send to an offline agent used to take the whole 15 s. Returns
 * how many still wait and the node's last state.
 */
async function flushOutbox(node, signal, { ms = 15_000, receiptMs = ms } = {}) {
  const until = Date.now() + ms;
  let connectedAt = null;
  let pending = 0;
  let status = null;
  while (!signal.aborted) {
    status = await nodeStatus(node, signal);
    pending = Number(status?.outbox ?? 0);
    if (status?.connected) connectedAt ??= Date.now();
    if (!pending || relayRefused(status) || Date.now() >= until) break;
    if (connectedAt === null && nothingThere(status)) break;
    if (connectedAt !== null && Date.now() >= connectedAt + receiptMs) break;
    await sleep(connectedAt === null ? 150 : 50);
  }
  return { pending, status };
}

/** Connection errors that mean nothing listens at the relay's address. */
const NOTHING_THERE = /ECONNREFUSED|ENOTFOUND|EAI_NONAME/;
const NOTHING_THERE_TRIES = 3;

/**
 * Nothing listens at the relay's address (or the name does not resolve):
 * after a few failed tries (about 3 s: a relay that is starting gets them),
 * waiting longer says nothing more.
 */
function nothingThere(status) {
  return Number(status?.relay_attempts ?? 0) >= NOTHING_THERE_TRIES && NOTHING_THERE.test(String(status?.relay_error ?? ''));
}

/**
 * Wait (bounded) until the relay link is up, the relay refused this agent,
 * or nothing answers at its address; the node's last state.
 */
async function relayReady(node, signal, ms = 15_000) {
  const until = Date.now() + ms;
  let status = null;
  while (!signal.aborted) {
    status = await nodeStatus(node, signal);
    if (status?.connected || relayRefused(status) || nothingThere(status) || Date.now() >= until) break;
    await sleep(100);
  }
  return status;
}

/** Characters of a message the engine's inbox text shows (src/agent/tools/mesh_inbox.rs LINE_CHARS). */
const INBOX_LINE_CHARS = 200;

/** How long a `send` waits for its recipient's receipt (see flushOutbox). */
const SEND_RECEIPT_MS = 1000;

/** How long a sandbox waits for its input files (src/offload/sandbox.rs). */
const INPUTS_WAIT_MS = 10 * 60 * 1000;

/** What became of the messages a command queued (offload, offload-cancel). */
function reportPending(err, run, { pending, status }) {
  if (!pending) return;
  const trouble = relayTrouble(status, run.node.relayUrl);
  if (trouble) {
    err(`kars-mesh: ${pending} message(s) not sent yet: ${trouble}; they are kept and go out the next time this agent runs and reaches the relay`);
  } else {
    // Handed to the relay, which keeps them for a recipient that is not
    // online: not a failure.
    err(`kars-mesh: ${pending} message(s) at the relay, not yet confirmed by the recipient (it may not be online); the relay keeps them for it, and the next run of this agent sends them again until it confirms`);
  }
}

/** Print why the relay does not work for this agent, and what sets it, on stderr. */
function relayFailure(err, run, status, what) {
  err(`kars-mesh: ${what}: ${relayTrouble(status, run.node.relayUrl)}`);
  // A refusal says what to change; otherwise the address may be wrong.
  if (!relayRefused(status)) err(`kars-mesh: ${endpointHint(run.node, 'relay')}, and check that the relay runs`);
}

/**
 * `send`: "sent" only once the relay has the message. A message the engine
 * queued (no relay connection yet) gets the bounded flush to go out; if it
 * does not, say why (unreachable, refused token, ...) and exit 3. The
 * message stays in the outbox either way.
 */
async function sendOutcome({ node, run, result, text, out, err, signal }) {
  const mesh = result?.details?.mesh ?? {};
  if (run.json) out(JSON.stringify(result, null, 2));
  if (mesh.unconfirmed) {
    // Written once to a peer without receipts, never written again.
    if (!run.json) err(text);
    return EXIT.UNREACHABLE;
  }
  if (!mesh.queued) {
    if (!run.json) out(text);
    await flushOutbox(node, signal, { receiptMs: SEND_RECEIPT_MS });
    return EXIT.OK;
  }
  const label = text.match(/^✓ Message queued for (.+?) \(E2E encrypted\)/)?.[1] ?? mesh.to;
  const flushed = await flushOutbox(node, signal, { receiptMs: SEND_RECEIPT_MS });
  if (signal.aborted) throw signal.reason ?? new Error('interrupted');
  const { pending, status } = flushed;
  if (!pending || status?.connected) {
    // The relay took the connection after all: what was queued went out
    // on it, before the marker that confirmed it (src/agent/handover.rs).
    if (!run.json) out(`✓ Message sent to ${label} (E2E encrypted; it waited for the relay connection)`);
    return EXIT.OK;
  }
  relayFailure(err, run, status, `the message to ${label} was not sent`);
  err(`kars-mesh: it is kept (end-to-end encrypted) in ${run.node.stateDir} and goes out the next time kars-mesh runs with this state directory and reaches the relay`);
  return EXIT.UNREACHABLE;
}

/**
 * Print an offload's phases as they happen (each call waits for news; no
 * polling), then its final snapshot. Exit 0 when done, 1 on error.
 */
async function followOffload(node, run, out, signal, { untilInputsSent = false } = {}) {
  // `offload --no-follow --file ...`: until the inputs have left (the
  // sandbox waits INPUTS_WAIT_MS for them), then the offload goes on alone.
  const limitMs = untilInputsSent ? INPUTS_WAIT_MS : run.tool === 'offload_status' ? run.waitSeconds * 1000 : 24 * 3600 * 1000;
  const deadline = Date.now() + limitMs;
  let after = 0;
  let last;
  let quietSince = Date.now();
  let hinted = false;
  out('');
  while (Date.now() < deadline) {
    const wait = Math.max(1, Math.min(60, Math.ceil((deadline - Date.now()) / 1000)));
    const r = await node.callTool('offload_status', { wait_seconds: wait, after_events: after }, { signal, timeoutMs: (wait + 30) * 1000 });
    last = r?.details?.mesh;
    if (!last?.events) break;
    for (const e of last.events.filter((x) => x.seq > after)) {
      out(`  ${new Date(e.at_ms).toISOString().slice(11, 19)}  ${e.phase.padEnd(12)} ${cliText(e.text)}`);
    }
    if (last.events_total > after) quietSince = Date.now();
    after = last.events_total;
    if (last.phase === 'done' || last.phase === 'error') break;
    if (untilInputsSent && last.inputs_sent === true) {
      out('\nThe input files have left; the offload goes on without this command. Follow it with: kars-mesh offload-status --wait 600');
      return EXIT.OK;
    }
    if (!hinted && last.phase === 'submitted' && Date.now() - quietSince > 25_000) {
      hinted = true;
      out('  (no answer from the controller yet: is the cluster up? `kars-mesh cluster status`; the offload fails by itself after 5 minutes without one)');
    }
  }
  if (!last?.events) return EXIT.OK;
  if (last.phase !== 'done' && last.phase !== 'error') {
    const unsent = last.inputs > 0 && last.inputs_sent === false ? ' (its input files have not all left: they go while this agent runs)' : '';
    out(`\nStill ${last.phase}${unsent}; follow it with: kars-mesh offload-status --wait 600`);
    return EXIT.OK;
  }
  // The final snapshot (reading it clears the finished offload).
  const snap = await node.callTool('offload_status', {}, { signal, timeoutMs: 30_000 });
  out('');
  out(cliText(resultText(snap), { verbose: run.verbose }));
  for (const f of last.outputs ?? []) out(`  → ${path.join(node.stateDir, 'files', f.path)}`);
  return last.phase === 'done' ? EXIT.OK : EXIT.TOOL_ERROR;
}

/** Print a usage error above the usage it is about; exit code 2. Other errors are not ours to print. */
function usageFailure(err, e) {
  if (!(e instanceof UsageError)) throw e;
  err(`kars-mesh: ${e.message}\n`);
  err(isCommand(e.topic) ? commandUsage(e.topic) : mainUsage());
  return EXIT.USAGE;
}

/**
 * Run the CLI. Returns the exit code; never calls process.exit.
 * @param {string[]} argv  arguments after the program name
 * @param {{ stdout?: {write(s:string):any}, stderr?: {write(s:string):any}, env?: object, signal?: AbortSignal,
 *           createNodeImpl?: Function }} [io]  createNodeImpl: tests only
 */
export async function main(
  argv,
  { stdout = process.stdout, stderr = process.stderr, env = process.env, signal, createNodeImpl } = {},
) {
  // A reader that goes away (`kars-mesh inbox | head -1`) ends our output,
  // not the command: no stack trace for the write that found it gone.
  let outClosed = false;
  stdout.on?.('error', () => {
    outClosed = true;
  });
  const out = (s) => {
    if (!outClosed) stdout.write(s.endsWith('\n') ? s : s + '\n');
  };
  out.closed = () => outClosed;
  const err = (s) => stderr.write(s.endsWith('\n') ? s : s + '\n');

  // Operator commands (a local cluster, its pairing tokens) have their own flags.
  const first = firstPositional(argv);
  // The browser console's server (js-host/console-server.js) has its own too.
  if (first.value === 'console' && first.index === 0) {
    return (await import('./console-server.js')).mainConsole(argv, { out, err, env, signal });
  }
  if (OPERATOR_GROUPS.includes(first.value)) {
    if (first.index !== 0) {
      err(`kars-mesh: put "${first.value}" first: kars-mesh ${first.value} ... (it takes --dir, not the agent flags)`);
      err(operatorUsage(first.value));
      return EXIT.USAGE;
    }
    return mainOperator(argv, { out, err, env, signal, createNodeImpl });
  }
  // The NemoClaw preset: no node, no state directory (js-host/cli-preset.js).
  if (first.value === 'preset' && first.index === 0) return mainPreset(argv.slice(1), { out, err, env });

  let p;
  try {
    p = plan(argv, env);
  } catch (e) {
    return usageFailure(err, e);
  }
  if (p.help) {
    out(p.help);
    return EXIT.OK;
  }
  if (p.consoleHelp) {
    out((await import('./console-server.js')).CONSOLE_USAGE);
    return EXIT.OK;
  }
  if (p.version) {
    out(`kars-mesh ${version()}`);
    return EXIT.OK;
  }
  const run = p.run;
  const log = stderrLog(err, run.verbose);

  // Loaded only to run a command: help and usage errors stay instant.
  let createNode;
  let NodeError;
  let fromToken;
  try {
    ({ createNode, NodeError } = await import('./node-host.js'));
    if (run.nodeFor) fromToken = await tokenUrls(run.args.token);
  } catch (e) {
    err(`kars-mesh: cannot load the kars-mesh core: ${e?.message ?? e}`);
    err('kars-mesh: the built core (js-host/gen/) is missing or broken; run `bash scripts/build.sh` (or reinstall the package)');
    return EXIT.UNREACHABLE;
  }
  if (run.nodeFor) {
    try {
      run.node = run.nodeFor(fromToken);
    } catch (e) {
      return usageFailure(err, e);
    }
  }
  let node;
  try {
    // The proxy settings come from the same environment as every other setting.
    const { from: _sources, endpoints, relayTokenAllowed, ...settings } = run.node;
    if (endpoints?.problem && run.command !== 'pair-with') err(`kars-mesh: ${endpoints.problem}`);
    const token = env.KARS_MESH_RELAY_TOKEN || null;
    const withheld = token && !relayTokenAllowed;
    if (withheld) err(`kars-mesh: KARS_MESH_RELAY_TOKEN is not sent to ${settings.relayUrl} (${run.node.from?.relay ?? 'not a relay you named'}): a relay token goes only to a relay you name. If it is that relay's token, run once with KARS_MESH_RELAY=${settings.relayUrl} (this state directory then remembers it)`);
    // The user named the relay pair-with remembered (an endpoints.json from
    // a pasted token, or from before relay_token_allowed existed): later
    // commands may send the token there without naming it again.
    const vouched = token && run.command !== 'pair-with' && ['--relay', 'KARS_MESH_RELAY'].includes(run.node.from?.relay) && endpoints?.relayUrl && endpoints.relayTokenAllowed !== true && sameRelay(endpoints.relayUrl, settings.relayUrl);
    const relayTokenHint = withheld
      ? `run again with KARS_MESH_RELAY=${settings.relayUrl} beside KARS_MESH_RELAY_TOKEN: the token is sent only to a relay you name, and this one came from ${run.node.from?.relay ?? 'elsewhere'}`
      : RELAY_TOKEN_HINT;
    // null, not undefined: createNode would read the environment's token itself.
    node = await (createNodeImpl ?? createNode)({ proxy: env, ...settings, relayToken: withheld ? null : token, relayTokenHint, log });
    // Written under the node's lock of the state directory, as pair-with writes it.
    if (vouched) rememberEndpoints(settings.stateDir, { relayUrl: endpoints.relayUrl, registryUrl: endpoints.registryUrl, relayTokenAllowed: true });
  } catch (e) {
    // By name: one rebuilt on the engine's thread is not this module's class.
    if (e?.name === 'StateDirError') {
      if (!log.said(e.message)) err(`kars-mesh: ${e.message}`);
      if (e.code === 'KARS_MESH_STATE_DIR_CREATE') {
        err('kars-mesh: give a directory this user can create and write with --state DIR or KARS_MESH_STATE (default ~/.kars-mesh)');
      }
      return EXIT.UNREACHABLE;
    }
    err(`kars-mesh: cannot start: ${e?.message ?? e}`);
    if (e instanceof NodeError && e.code === 'KARS_MESH_CORE_LOAD') {
      err('kars-mesh: the built core is missing or broken; run `bash scripts/build.sh` (or reinstall the package)');
    }
    return EXIT.UNREACHABLE;
  }

  const ctl = new AbortController();
  const onAbort = () => ctl.abort(signal.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  // A signal while the node was starting: stop now, do not begin the command.
  if (signal?.aborted) onAbort();
  const failuresBefore = node.ioFailures;
  let code;
  try {
    if (ctl.signal.aborted) throw ctl.signal.reason ?? new Error('interrupted');
    if (run.command === 'id') await settleIdentity(node, ctl.signal, failuresBefore);
    // An offload's request must reach the controller within its 5 minutes:
    // with the relay unreachable nothing is submitted (a walk-through read
    // "working on it" with the cluster down), and the user runs it again.
    if (run.command === 'offload') {
      const link = await relayReady(node, ctl.signal);
      if (!link?.connected && !ctl.signal.aborted) {
        err(`kars-mesh: nothing was submitted: ${relayTrouble(link, run.node.relayUrl)}. Start the cluster (or check the relay), then run the offload again`);
        if (!relayRefused(link)) err(`kars-mesh: ${endpointHint(run.node, 'relay')}, and check that the relay runs`);
        return EXIT.UNREACHABLE;
      }
    }
    const result = await node.callTool(run.tool, run.args, {
      signal: ctl.signal,
      timeoutMs: CALL_TIMEOUT_MS + run.waitSeconds * 1000,
    });
    const failed = isErrorResult(result);
    let text = cliText(resultText(result), { verbose: run.verbose });
    // The tool's "no change" answer tells a model to stop polling; a person
    // who asked again is told where the offload is, in command words.
    const quiet = result?.details?.mesh;
    if (run.command === 'offload-status' && quiet?.no_change === true) {
      text = `⏳ Offload ${String(quiet.request_id ?? '').slice(0, 8)}: still ${quiet.phase}, nothing new since the last look. kars-mesh offload-status --wait 600 follows it.`;
    }
    if (run.command === 'id') text = unsettledIdText(text);
    if (!failed && run.command === 'send') {
      code = await sendOutcome({ node, run, result, text, out, err, signal: ctl.signal });
      return code;
    }
    // inbox: the relay must have been reached, else what it keeps is missing.
    const relayStatus = !failed && run.command === 'inbox' ? await nodeStatus(node, ctl.signal) : null;
    const relayDown = relayStatus && !relayStatus.connected;
    const shown = result?.details?.mesh?.messages;
    if (run.json) out(JSON.stringify(result, null, 2));
    else if (failed) err(text);
    // An empty inbox is not news when the relay was not reached.
    else if (!relayDown || (Array.isArray(shown) && shown.length)) {
      out(text);
      // The engine shows 200 characters of each message (its text for an
      // agent); a person should know the rest is there.
      // As the engine shows it (mesh_inbox.rs content_text): a message's
      // content, any other payload as its JSON.
      const shownText = (p) => (typeof p === 'string' ? p : p?.type === 'message' && typeof p.content === 'string' ? p.content : JSON.stringify(p ?? ''));
      const cut = Array.isArray(shown) && shown.some((m) => [...shownText(m.payload)].length > INBOX_LINE_CHARS);
      if (cut) out(`(a message over ${INBOX_LINE_CHARS} characters is cut above; kars-mesh inbox --json shows it whole)`);
    }
    // Only what was unread is marked (and said to be): `inbox --all` also
    // shows messages read before.
    const unreadShown = Array.isArray(shown) ? shown.filter((m) => m.read !== true) : [];
    const toMark = !failed && run.markAfter && unreadShown.length > 0;
    // A write to a reader that went away fails after this turn.
    if (toMark) await new Promise((r) => setImmediate(r));
    if (toMark && out.closed?.()) {
      err('kars-mesh: the output was cut short; the messages stay unread');
    } else if (toMark) {
      const ids = unreadShown.map((m) => m.id);
      const marked = await node.callTool(run.tool, { ids, mark_read: true }, { signal: ctl.signal, timeoutMs: CALL_TIMEOUT_MS });
      if (isErrorResult(marked)) err(`kars-mesh: the messages above stay unread: ${resultText(marked)}`);
      // The header counted them unread when they were printed.
      else if (!run.json) out('(now marked read; kars-mesh inbox --all shows them again)');
    }
    if (!failed && run.command === 'pair-with') {
      const file = rememberEndpoints(run.node.stateDir, run.node);
      // Later commands go to this cluster's relay: said when that changed.
      const before = run.node.endpoints ?? {};
      if (!run.json && (before.relayUrl !== run.node.relayUrl || before.registryUrl !== run.node.registryUrl)) {
        out(`This agent now uses relay ${run.node.relayUrl} and registry ${run.node.registryUrl} for later commands (kept in ${file}; --relay/--registry or KARS_MESH_RELAY/KARS_MESH_REGISTRY still win).`);
      }
    }
    // An error that names the registry's URL is about that URL (not the
    // registry, unreachable): say which setting gave it.
    const aboutRegistry = failed && text.includes(run.node.registryUrl);
    if (aboutRegistry) err(`kars-mesh: ${endpointHint(run.node, 'registry')}`);
    if (failed && result?.details?.mesh?.bad_input === true) {
      // The arguments were refused before anything was asked of the
      // network: a usage error, whatever the network did meanwhile (a
      // background registration failing is not why).
      code = EXIT.USAGE;
    } else if (failed) {
      // A tool error while the host saw the network fail: relay/registry unreachable.
      code = node.ioFailures > failuresBefore || aboutRegistry ? EXIT.UNREACHABLE : EXIT.TOOL_ERROR;
      // A pairing that timed out while this agent never reached the relay:
      // the controller could not have answered, so name the relay, not it.
      if (run.command === 'pair-with') {
        const status = await nodeStatus(node, ctl.signal);
        if (status && !status.connected) {
          relayFailure(err, run, status, 'the pairing request never reached the cluster');
          code = EXIT.UNREACHABLE;
        }
      }
    } else if (relayDown) {
      relayFailure(err, run, relayStatus, 'messages the relay keeps for this agent were not fetched');
      code = EXIT.UNREACHABLE;
    } else if (run.command === 'offload' && result?.details?.mesh?.duplicate === true) {
      // Nothing was started: a script must not take the earlier run's
      // result for this one's.
      code = EXIT.TOOL_ERROR;
    } else {
      const submitted = result?.details?.mesh?.request_id !== undefined;
      const inputs = run.command === 'offload' && Array.isArray(run.args.files) && run.args.files.length > 0;
      // The request is in the outbox: if the relay cannot be reached, it has
      // not left, and following would wait for an answer that cannot come
      // (a walk-through with the cluster down read "working on it" and
      // waited). Said, and ended as an unsent `send` ends.
      const unsent = submitted && run.command === 'offload' ? await flushOutbox(node, ctl.signal, { receiptMs: 0 }) : null;
      if (unsent?.pending && !unsent.status?.connected && !ctl.signal.aborted) {
        err(`kars-mesh: the offload request has not left: ${relayTrouble(unsent.status, run.node.relayUrl)}; it is kept and goes out the next time this agent runs and reaches the relay (kars-mesh offload-status --wait 600 then follows it)`);
        if (!relayRefused(unsent.status)) err(`kars-mesh: ${endpointHint(run.node, 'relay')}, and check that the relay runs`);
        code = EXIT.UNREACHABLE;
      } else {
        code = submitted && run.follow
          ? await followOffload(node, run, out, ctl.signal)
          : submitted && inputs
            ? await followOffload(node, run, out, ctl.signal, { untilInputsSent: true })
            : EXIT.OK;
      }
      // A one-shot process must not stop before what it queued went out (a
      // cancel, an offload submitted with --no-follow). Its receipts are
      // waited for as a send's: a message to a sandbox long gone (it never
      // confirms) made every later offload and cancel wait the whole 15 s.
      if (SENDS.has(run.command) && code !== EXIT.UNREACHABLE) reportPending(err, run, await flushOutbox(node, ctl.signal, { receiptMs: SEND_RECEIPT_MS }));
    }
  } catch (e) {
    if (ctl.signal.aborted) {
      err('kars-mesh: interrupted');
      code = EXIT.INTERRUPTED;
    } else if (e instanceof NodeError && e.code === 'KARS_MESH_TIMEOUT') {
      err(`kars-mesh: ${e.message}; is the relay/registry reachable? (${run.node.relayUrl}, ${run.node.registryUrl})`);
      code = EXIT.UNREACHABLE;
    } else {
      if (!log.said(e?.message)) err(`kars-mesh: ${e?.message ?? e}`);
      // A damaged state database: the state directory is the problem (3), and a retry meets it again.
      code = e?.name === 'StateDirError' ? EXIT.UNREACHABLE : EXIT.TOOL_ERROR;
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await node.stop();
  }
  return code;
}
