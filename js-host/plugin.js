// The kars-mesh OpenClaw plugin entry (package.json openclaw.extensions).
//
// A thin shell around the engine (js-host/ENGINE.md): every tool forwards its
// arguments unchanged to the engine tool of the same name and returns the
// engine's result `{content:[{type:"text",text}], details:{mesh:{...}}}`. The
// engine validates arguments and writes every text; nothing here decides a
// protocol question.
//
// OpenClaw rules this file follows (docs/spec/openclaw-host.md §2, §9):
//   - register(api) is synchronous, cheap and idempotent: OpenClaw calls it
//     several times per process (full, tool-discovery, discovery, again after a
//     config reload). It opens nothing; no top-level await in the module graph
//     (the engine host and the wasm glue are imported lazily).
//   - One node per state directory per process, shared by every registration,
//     started by the background service (Gateway `full` mode only) or by the
//     first tool call.
//   - A failed tool call throws, as OpenClaw's tool contract asks ("throw on
//     failure instead of encoding errors in content", AgentTool.execute in
//     the plugin SDK), with the original's ❌ text as the message (see
//     `toolOutcome`): a node that cannot start fails every tool with
//     "❌ Failed to connect to mesh: <reason>". The /offload command and the
//     message_sending hook still take the engine's results as they are.
//   - Without `state_dir`, the state lives under OpenClaw's state directory
//     (<state>/kars-mesh, with fallbacks for a read-only one) and an existing
//     ~/.kars-mesh is imported once (js-host/state-location.js).
//   - Where the host passes `onUpdate` (OpenClaw's AgentToolUpdateCallback),
//     a waiting `offload_status` streams the offload's progress reports
//     through it (`offloadStatusWithUpdates`).

import os from 'node:os';
import path from 'node:path';
import { TOOLS, TOOL_NAMES } from './tools.js';
import { escapeLog } from './log-escape.js';
import { openclawStateDirFromEnv, prepareDefaultStateDir } from './state-location.js';

export const PLUGIN_ID = 'kars-mesh';
export { TOOL_NAMES };

const DEFAULT_RELAY = 'http://127.0.0.1:8083';
const DEFAULT_REGISTRY = 'http://127.0.0.1:8082';
const DEFAULT_START_SECONDS = 30;
// Above the longest wait an engine tool may take (mesh_await: 600 s).
const DEFAULT_TOOL_SECONDS = 660;
const NOTIFY_TIMEOUT_MS = 5000;
const DEFAULT_NODE_KEY = '(OpenClaw state directory)';

// ---- secrets never leave through texts or logs ---------------------------

const TOKEN_RE = /azcp_1_[A-Za-z0-9_\-+=/]+/g;

function redact(text) {
  let s = String(text ?? '');
  s = s.replace(TOKEN_RE, 'azcp_1_[redacted]');
  const relayToken = process.env.KARS_MESH_RELAY_TOKEN;
  if (relayToken && relayToken.length >= 4) s = s.split(relayToken).join('[redacted]');
  return s;
}

function errorText(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  let msg = e.message || String(e);
  if (e.cause?.message && !msg.includes(e.cause.message)) msg += `: ${e.cause.message}`;
  return msg;
}

/** How a failed call is reported to OpenClaw (see `toolOutcome`). */
const FAILURE = Symbol('kars-mesh.failure');

function errorResult(text, error, failure = 'refused') {
  const r = { content: [{ type: 'text', text }], details: { mesh: { error } } };
  Object.defineProperty(r, FAILURE, { value: failure });
  return r;
}

/**
 * Whether a tool result is a failed call: the engine's failure shape,
 * `details.mesh` exactly `{error: string}`, or `{error, bad_input: true}`
 * for refused arguments, with a text starting with ❌ (js-host/ENGINE.md).
 * A result that *reports* a failure of something else (offload_status on an
 * offload that ended in error) carries more and is an answer, not a failed
 * call.
 */
export function isToolFailure(result) {
  const mesh = result?.details?.mesh;
  const text = result?.content?.[0]?.text;
  if (!mesh || typeof mesh !== 'object' || typeof mesh.error !== 'string') return false;
  if (typeof text !== 'string' || !text.startsWith('❌')) return false;
  const keys = Object.keys(mesh);
  return keys.length === 1 || (keys.length === 2 && mesh.bad_input === true);
}

/**
 * The error a failed tool call throws. OpenClaw's contract (openclaw 2026.9.6):
 *   - `name: "ToolInputError"` (status 400) is what OpenClaw's own tools throw
 *     for a call they refuse or cannot carry out and explain why (e.g. "No PDF
 *     model configured."); POST /tools/invoke answers HTTP 400
 *     `{ok:false, error:{type:"tool_error", message}}` with the message as it
 *     is. The engine's refusals and failures, and a node that cannot start,
 *     are reported this way: their ❌ texts are written for the caller.
 *   - any other error is an unexpected failure: /tools/invoke answers HTTP
 *     500 with the message withheld ("tool execution failed") and logs it.
 *     A call that timed out, was cancelled, or got no answer from the engine.
 * In an agent turn both become the tool result `{status:"error", tool,
 * error: <message>}`, which OpenClaw counts as a failed call. The engine's
 * `details` ride along on the error (`.details`) for in-process callers.
 */
export class MeshToolError extends Error {
  constructor(message, { details, expected = true } = {}) {
    super(message);
    this.name = expected ? 'ToolInputError' : 'MeshToolError';
    if (expected) this.status = 400;
    this.details = details;
  }
}

/** The engine's result for a successful call; throws MeshToolError for a failed one. */
export function toolOutcome(result) {
  if (!isToolFailure(result)) return result;
  throw new MeshToolError(result.content[0].text, { details: result.details, expected: result[FAILURE] !== 'unexpected' });
}

// ---- settings ------------------------------------------------------------

function expandHome(p) {
  if (p === '~') return os.homedir();
  if (p.startsWith('~/')) return path.join(os.homedir(), p.slice(2));
  return path.resolve(os.homedir(), p);
}

function positiveSeconds(v, fallback) {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : fallback;
}

/**
 * Node settings from `plugins.entries.kars-mesh.config` (validated by OpenClaw
 * against the manifest's configSchema), then the environment the CLI also
 * reads, then defaults.
 */
export function resolveSettings(pluginConfig = {}, env = process.env) {
  const c = pluginConfig && typeof pluginConfig === 'object' ? pluginConfig : {};
  const str = (v) => (typeof v === 'string' && v.trim() ? v.trim() : undefined);
  const named = str(c.state_dir) ?? str(env.KARS_MESH_STATE);
  const settings = {
    // A directory the configuration names, or undefined: the default place
    // under OpenClaw's state directory, chosen when the node starts.
    stateDir: named ? expandHome(named) : undefined,
    // One node per state directory per process; the default place is one.
    nodeKey: named ? expandHome(named) : DEFAULT_NODE_KEY,
    // register() replaces it with the host's answer (api.runtime.state).
    openclawStateDir: () => openclawStateDirFromEnv(env),
    relayUrl: str(c.relay_url) ?? str(env.KARS_MESH_RELAY) ?? DEFAULT_RELAY,
    registryUrl: str(c.registry_url) ?? str(env.KARS_MESH_REGISTRY) ?? DEFAULT_REGISTRY,
    name: str(c.display_name),
    capabilities: Array.isArray(c.capabilities) ? c.capabilities.filter((x) => typeof x === 'string' && x) : undefined,
    acceptSessions:
      typeof c.accept_sessions === 'string' || Array.isArray(c.accept_sessions) ? c.accept_sessions : undefined,
    startTimeoutMs: positiveSeconds(c.timeouts?.start_seconds, DEFAULT_START_SECONDS) * 1000,
    toolTimeoutMs: positiveSeconds(c.timeouts?.tool_seconds, DEFAULT_TOOL_SECONDS) * 1000,
  };
  // What the running node depends on: a reload that changes it restarts the node.
  settings.fingerprint = JSON.stringify([
    settings.relayUrl,
    settings.registryUrl,
    settings.name ?? null,
    settings.capabilities ?? null,
    settings.acceptSessions ?? null,
  ]);
  return settings;
}

// ---- one node per state directory, for the whole process ----------------

const GLOBAL_KEY = Symbol.for('kars-mesh.openclaw-plugin.nodes');
/** @returns {Map<string, {fingerprint: string, promise: Promise<object>, node: object|null}>} */
function nodes() {
  globalThis[GLOBAL_KEY] ??= new Map();
  return globalThis[GLOBAL_KEY];
}

/** Stop the node of an entry once it has started (or give up if it never does). */
async function stopEntry(entry) {
  const node = entry.node ?? (await entry.promise.catch(() => null));
  if (node && !node.stopped) await node.stop().catch(() => {});
}

function startNode(settings, log, previous) {
  return (async () => {
    if (previous) await stopEntry(previous); // releases the state directory's lock
    const { createNode } = await import('./node-host.js');
    const stateDir =
      settings.stateDir ??
      prepareDefaultStateDir({ openclawStateDir: settings.openclawStateDir(), log });
    const starting = createNode({
      stateDir,
      relayUrl: settings.relayUrl,
      registryUrl: settings.registryUrl,
      name: settings.name,
      capabilities: settings.capabilities,
      acceptSessions: settings.acceptSessions,
      // The token is never part of the plugin's config (README): it comes
      // from the Gateway's environment.
      relayTokenHint:
        "set KARS_MESH_RELAY_TOKEN in the OpenClaw Gateway's environment to the relay's AGENTMESH_RELAY_TOKEN, then restart the Gateway",
      // A user of the original plugin keeps their DID (read only; used only
      // when this state directory has no identity yet).
      legacyIdentityFile: path.join(os.homedir(), '.kars', 'identity.json'),
      // ... and the pairings it made (imported once; the newest is the default).
      legacyPairingsFile: path.join(os.homedir(), '.kars', 'pairings.json'),
      log,
    });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the mesh node did not start within ${settings.startTimeoutMs / 1000} s`)),
        settings.startTimeoutMs,
      );
      timer.unref?.();
    });
    try {
      return await Promise.race([starting, timeout]);
    } catch (e) {
      // A start that finishes after the timeout must not keep the directory locked.
      starting.then((n) => n.stop(), () => {});
      throw e;
    } finally {
      clearTimeout(timer);
    }
  })();
}

/**
 * The running node for these settings: started on first use, shared by all
 * registrations, restarted when it died or when a config reload changed it.
 */
export function getNode(settings, log) {
  const map = nodes();
  let entry = map.get(settings.nodeKey);
  let previous = null;
  if (entry && ((entry.node && entry.node.stopped) || entry.fingerprint !== settings.fingerprint)) {
    previous = entry;
    map.delete(settings.nodeKey);
    entry = undefined;
  }
  if (!entry) {
    entry = { fingerprint: settings.fingerprint, node: null, promise: null };
    entry.promise = startNode(settings, log, previous);
    map.set(settings.nodeKey, entry);
    const own = entry;
    entry.promise.then(
      (n) => { own.node = n; },
      () => { if (map.get(settings.nodeKey) === own) map.delete(settings.nodeKey); },
    );
  }
  return entry.promise;
}

/** The node for this state directory if it is already running (never starts one). */
function runningNode(settings) {
  const n = nodes().get(settings.nodeKey)?.node;
  return n && !n.stopped ? n : null;
}

/** Stop every node this process started (the service's stop, tests). */
export async function stopAllNodes() {
  const map = nodes();
  const entries = [...map.values()];
  map.clear();
  await Promise.all(entries.map(stopEntry));
}

// ---- calling the engine ---------------------------------------------------

/**
 * Call an engine tool on the shared node. Resolves with the engine's result,
 * or an error result when the node cannot start or the call cannot be
 * answered (aborted, timed out, node stopped). Never rejects; the tools'
 * `execute` turns a failed call into a throw (`toolOutcome`).
 */
export async function callEngine(settings, log, tool, params, { signal, timeoutMs } = {}) {
  let node;
  try {
    node = await getNode(settings, log);
  } catch (e) {
    const reason = redact(errorText(e));
    return errorResult(`❌ Failed to connect to mesh: ${reason}`, reason);
  }
  try {
    const result = await node.callTool(tool, params ?? {}, { signal, timeoutMs: timeoutMs ?? settings.toolTimeoutMs });
    if (result && typeof result === 'object' && Array.isArray(result.content)) return result;
    return errorResult(`❌ ${tool}: the engine returned no result`, 'no result', 'unexpected');
  } catch (e) {
    const reason = signal?.aborted ? 'cancelled' : redact(errorText(e));
    return errorResult(`❌ ${tool} failed: ${reason}`, reason, 'unexpected');
  }
}

// ---- offload progress through the host's update channel ------------------

const KIB = 1024;
const MIB = 1024 * 1024;

/** `12.0 of 30.0 MiB` (both in the unit of the total), as the engine writes it. */
function ofSize(done, total) {
  if (total < KIB) return `${done} of ${total} bytes`;
  const [div, unit] = total < MIB ? [KIB, 'KiB'] : [MIB, 'MiB'];
  return `${(done / div).toFixed(1)} of ${(total / div).toFixed(1)} ${unit}`;
}

/**
 * The public progress line of an offload event: our own words and numbers
 * only (no file name, nothing the sandbox wrote), as OpenClaw asks of
 * channel progress (`privacy: "public"`).
 */
export function publicProgressText(requestId, e) {
  const p = e?.progress;
  const id = `Offload ${String(requestId ?? '').slice(0, 8)}`;
  if (!p) return `${id}: ${e?.phase ?? 'update'}`;
  if (p.kind === 'wait') return `${id}: the sandbox is waiting to start`;
  if (p.kind === 'run') return typeof p.pct === 'number' ? `${id} running: ${p.pct}%` : `${id} running`;
  const verb = p.kind === 'output' ? 'received' : 'acknowledged';
  const counted = p.chunks_total === 1 ? `1 of 1 message ${verb}` : `${p.chunks_done} of ${p.chunks_total} chunks ${verb}`;
  const bytes = typeof p.bytes_done === 'number' && typeof p.bytes_total === 'number' ? `${ofSize(p.bytes_done, p.bytes_total)} ` : '';
  return `${id}: ${p.kind} ${bytes}(${counted})`;
}

/**
 * `offload_status {wait_seconds}` for a host that takes partial results:
 * the engine's wait, repeated while the news is only progress reports
 * (events with `progress`), each pushed through `onUpdate` as it comes; the
 * call answers on other news (a phase, a file received, the end) or when
 * `wait_seconds` are up, as without updates. `onUpdate` gets OpenClaw's
 * partial AgentToolResult: `{content: [the new events' lines], details:
 * {mesh: <the snapshot>}, progress: {text, visibility: "channel", privacy:
 * "public", id}}`.
 */
export async function offloadStatusWithUpdates(call, params, onUpdate) {
  const wait = Number(params?.wait_seconds);
  let result = await call(params);
  // Arguments the engine refused, or no wait: its answer as it is.
  if (!(wait > 0) || !(wait <= 600)) return result;
  const deadline = Date.now() + wait * 1000;
  const given = Number(params?.after_events);
  let after = params?.after_events != null && Number.isSafeInteger(given) && given >= 0 ? given : null;
  for (;;) {
    const m = result?.details?.mesh;
    if (!m || m.error || !Array.isArray(m.events) || m.active === false || typeof m.events_total !== 'number') return result;
    // Without `after_events` the first wait started at a count we do not
    // know: its news is at least the newest event.
    const fresh = m.events.filter((e) => (after === null ? e.seq === m.events_total : e.seq > after));
    if (fresh.length === 0 || fresh.some((e) => !e.progress)) return result;
    const latest = fresh[fresh.length - 1];
    try {
      onUpdate({
        content: [{ type: 'text', text: fresh.map((e) => e.text).join('\n') }],
        details: { mesh: m },
        progress: {
          text: publicProgressText(m.request_id, latest),
          visibility: 'channel',
          privacy: 'public',
          id: `kars-mesh-offload-${m.request_id}`,
        },
      });
    } catch {
      /* the host's callback must not end the wait */
    }
    after = m.events_total;
    const left = (deadline - Date.now()) / 1000;
    if (left <= 0) return result;
    result = await call({ ...params, wait_seconds: left, after_events: after });
  }
}

function resultText(result) {
  const t = result?.content?.find?.((c) => c?.type === 'text')?.text;
  return typeof t === 'string' ? t : '';
}

// ---- register -------------------------------------------------------------

function makeLogger(api) {
  const logger = api.logger ?? {};
  return (level, message) => {
    const m = `kars-mesh: ${escapeLog(redact(message))}`;
    try {
      if (level === 'error') logger.error?.(m);
      else if (level === 'warn') logger.warn?.(m);
      else if (level === 'info') logger.info?.(m);
      // debug lines of the core stay out of the Gateway log
    } catch {
      /* a logger must not break the node */
    }
  };
}

/**
 * OpenClaw's state directory: the host's own answer
 * (api.runtime.state.resolveStateDir, which also knows OpenClaw's legacy
 * directory names), else OPENCLAW_STATE_DIR or ~/.openclaw.
 */
function openclawStateDir(api) {
  try {
    const d = api.runtime?.state?.resolveStateDir?.(process.env);
    if (typeof d === 'string' && d.trim()) return path.resolve(d);
  } catch {
    /* not offered in this registration mode */
  }
  return openclawStateDirFromEnv(process.env);
}

function register(api) {
  const mode = api.registrationMode ?? 'full';
  // Metadata-only loads have no runtime; register nothing.
  if (mode === 'cli-metadata' || mode === 'setup-only') return;

  const settings = resolveSettings(api.pluginConfig);
  settings.openclawStateDir = () => openclawStateDir(api);
  const log = makeLogger(api);

  for (const def of TOOLS) {
    const tool = def.name;
    api.registerTool({
      name: tool,
      label: def.label,
      description: def.description,
      parameters: def.parameters,
      execute: async (_toolCallId, params, signal, onUpdate) => {
        if (tool === 'offload_status' && typeof onUpdate === 'function') {
          const call = (p) => callEngine(settings, log, tool, p, { signal });
          return toolOutcome(await offloadStatusWithUpdates(call, params, onUpdate));
        }
        return toolOutcome(await callEngine(settings, log, tool, params, { signal }));
      },
    });
  }

  if (typeof api.registerCommand === 'function') {
    api.registerCommand({
      name: 'offload',
      description: 'Show the status of the active cloud offload, or cancel it: /offload [status|cancel]',
      acceptsArgs: true,
      async handler(ctx) {
        const sub = String(ctx?.args ?? '').trim().split(/\s+/)[0].toLowerCase();
        // OpenClaw 2026.9.6 command results are ReplyPayloads: the reply text is `text`.
        if (sub === 'cancel') {
          const result = await callEngine(settings, log, 'offload_cancel', {});
          const id = result?.details?.mesh?.request_id;
          // The original's command reply (kars-mesh-plugin.md §3).
          if (result?.details?.mesh?.cancelled && typeof id === 'string') return { text: `🛑 Offload ${id.slice(0, 8)} cancel request sent.` };
          return { text: resultText(result) || '❌ offload_cancel: no answer' };
        }
        // Status: the news not yet shown, then the snapshot (§3).
        const news = await callEngine(settings, log, 'offload_notifications', {});
        const lines = Array.isArray(news?.details?.mesh?.lines) ? news.details.mesh.lines.filter((l) => typeof l === 'string' && l) : [];
        const result = await callEngine(settings, log, 'offload_status', {});
        const snapshot = resultText(result) || '❌ offload_status: no answer';
        return { text: lines.length ? `${lines.join('\n')}\n\n${snapshot}` : snapshot };
      },
    });
  }

  if (typeof api.on === 'function') {
    // Offload news goes in front of the next outgoing message. Only a node that
    // is already running is asked (a message must not start the mesh link); an
    // engine without the tool, or any error, leaves the message alone.
    // OpenClaw may run the hook again on the message it already returned
    // (the reply and its delivery), with the text no longer byte for byte
    // ours: a message that already opens with news lines (the engine's
    // offload_notifications format, which no other text starts with) has its
    // news; asking again would take the next news to put in front of it.
    const NEWS_LINE = /^\S+ Offload [0-9a-f]{8} [a-z]+: \S/;
    api.on('message_sending', async (event) => {
      const node = runningNode(settings);
      if (!node || typeof event?.content !== 'string') return undefined;
      if (NEWS_LINE.test(event.content)) return undefined;
      let result;
      try {
        result = await node.callTool('offload_notifications', {}, { timeoutMs: NOTIFY_TIMEOUT_MS });
      } catch {
        return undefined;
      }
      const lines = result?.details?.mesh?.lines;
      if (result?.details?.mesh?.error || !Array.isArray(lines)) return undefined;
      const text = lines.filter((l) => typeof l === 'string' && l).join('\n');
      if (!text) return undefined;
      return { content: `${text}\n\n${event.content}` };
    });
  }

  // Services start only in the Gateway's full mode; discovery loads skip them.
  if (mode === 'full' && typeof api.registerService === 'function') {
    api.registerService({
      id: PLUGIN_ID,
      async start(ctx) {
        try {
          const node = await getNode(settings, log);
          log('info', `mesh node started (${node.did}); state directory ${node.stateDir}`);
          ctx?.serviceHealth?.clearFailure?.();
        } catch (e) {
          // Not fatal for the Gateway: tools retry the start and report the reason.
          const reason = redact(errorText(e));
          log('warn', `mesh node did not start: ${reason}`);
          try {
            ctx?.serviceHealth?.reportFailure?.(new Error(reason));
          } catch {
            /* optional surface */
          }
        }
      },
      async stop() {
        await stopAllNodes();
      },
    });
  }
}

export default {
  id: PLUGIN_ID,
  name: 'Kars Mesh',
  description: 'End-to-end encrypted agent messaging over an AgentMesh relay, discovery, and kars cluster pairing',
  register,
};
