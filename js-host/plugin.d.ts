// Types of the kars-mesh OpenClaw plugin entry (js-host/plugin.js), the
// package's main export. The plugin has no runtime dependency on the
// OpenClaw SDK: the `api` it takes is described here only as far as it uses
// it (OpenClaw's OpenClawPluginApi is a superset).

/** `{type:"text", text}`: the engine writes every text. */
export interface TextContent {
  type: 'text';
  text: string;
}

/** An engine tool result: the text in `content[0].text`, structured data under `details.mesh` (js-host/ENGINE.md). */
export interface MeshToolResult {
  content: TextContent[];
  details: { mesh: Record<string, unknown> };
  progress?: { text: string; visibility: 'channel'; privacy: 'public'; id?: string };
}

/** The plugin's configuration (`plugins.entries.kars-mesh.config`, openclaw.plugin.json configSchema). */
export interface KarsMeshPluginConfig {
  relay_url?: string;
  registry_url?: string;
  /** Default: env KARS_MESH_STATE, else <OpenClaw state directory>/kars-mesh (an existing ~/.kars-mesh is imported once). */
  state_dir?: string;
  display_name?: string;
  capabilities?: string[];
  accept_sessions?: string | string[];
  timeouts?: { start_seconds?: number; tool_seconds?: number };
}

/** The part of OpenClaw's plugin API the plugin uses. */
export interface PluginApiLike {
  registrationMode?: 'full' | 'discovery' | 'tool-discovery' | 'setup-only' | 'setup-runtime' | 'cli-metadata' | string;
  pluginConfig?: KarsMeshPluginConfig | Record<string, unknown>;
  logger?: { debug?(m: string): void; info?(m: string): void; warn?(m: string): void; error?(m: string): void };
  runtime?: { state?: { resolveStateDir?(env?: Record<string, string | undefined>): string } };
  registerTool(tool: {
    name: string;
    label: string;
    description: string;
    parameters: Record<string, unknown>;
    execute(
      toolCallId: string,
      params: Record<string, unknown>,
      signal?: AbortSignal,
      onUpdate?: (partial: MeshToolResult) => void,
    ): Promise<MeshToolResult>;
  }): void;
  registerCommand?(command: {
    name: string;
    description: string;
    acceptsArgs?: boolean;
    handler(ctx: { args?: string }): Promise<{ text: string }>;
  }): void;
  registerService?(service: { id: string; start(ctx?: unknown): Promise<void>; stop?(ctx?: unknown): Promise<void> }): void;
  on?(hook: 'message_sending', handler: (event: { content?: string }) => Promise<{ content: string } | undefined>): void;
}

export interface KarsMeshPluginEntry {
  id: 'kars-mesh';
  name: string;
  description: string;
  /** Synchronous and idempotent; opens nothing (OpenClaw calls it several times per process). */
  register(api: PluginApiLike): void;
}

declare const plugin: KarsMeshPluginEntry;
export default plugin;

export const PLUGIN_ID: 'kars-mesh';
/** The eight tool names, as in openclaw.plugin.json contracts.tools. */
export const TOOL_NAMES: readonly string[];

/**
 * What a failed tool call throws (OpenClaw's contract: throw on failure).
 * `name` is "ToolInputError" (status 400) for the engine's refusals and a node
 * that cannot start, "MeshToolError" for unexpected failures (a timeout, a
 * cancelled call). The message is the original's ❌ text.
 */
export class MeshToolError extends Error {
  constructor(message: string, opts?: { details?: MeshToolResult['details']; expected?: boolean });
  name: 'ToolInputError' | 'MeshToolError';
  status?: 400;
  details?: MeshToolResult['details'];
}

/** Whether a result is a failed call (`details.mesh` exactly `{error}`, or `{error, bad_input: true}` for refused arguments; text starting with ❌). */
export function isToolFailure(result: unknown): boolean;
/** The result of a successful call; throws MeshToolError for a failed one. */
export function toolOutcome(result: MeshToolResult): MeshToolResult;

export interface KarsMeshSettings {
  /** The directory the configuration names, or undefined for the default place. */
  stateDir: string | undefined;
  nodeKey: string;
  openclawStateDir(): string;
  relayUrl: string;
  registryUrl: string;
  name?: string;
  capabilities?: string[];
  acceptSessions?: string | string[];
  startTimeoutMs: number;
  toolTimeoutMs: number;
  fingerprint: string;
}
export function resolveSettings(pluginConfig?: KarsMeshPluginConfig | Record<string, unknown>, env?: Record<string, string | undefined>): KarsMeshSettings;

/** Call an engine tool on the process's node for these settings; never rejects (failures are error results). */
export function callEngine(
  settings: KarsMeshSettings,
  log: (level: string, message: string) => void,
  tool: string,
  params?: Record<string, unknown>,
  opts?: { signal?: AbortSignal; timeoutMs?: number },
): Promise<MeshToolResult>;
/** Stop every node this process started. */
export function stopAllNodes(): Promise<void>;
export function getNode(settings: KarsMeshSettings, log: (level: string, message: string) => void): Promise<unknown>;
export function offloadStatusWithUpdates(
  call: (params: Record<string, unknown>) => Promise<MeshToolResult>,
  params: Record<string, unknown>,
  onUpdate: (partial: MeshToolResult) => void,
): Promise<MeshToolResult>;
export function publicProgressText(requestId: string, event: unknown): string;
