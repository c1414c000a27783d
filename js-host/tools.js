// The eight OpenClaw tools of kars-mesh: names, descriptions and parameter
// schemas of the original @kars/mesh plugin (docs/spec/kars-mesh-plugin.md
// §2; descriptions verbatim). The engine validates arguments and writes every
// text; these definitions only tell the model what to pass.

export const TOOLS = Object.freeze([
  {
    name: 'mesh_pair',
    label: 'Mesh: pair with a kars cluster',
    description:
      'One-time pairing with an kars cluster using an admin-provided token. After pairing, you can use cloud_offload to delegate tasks to governed cloud sandboxes.',
    parameters: {
      type: 'object',
      properties: {
        token: { type: 'string', description: 'Pairing token (starts with azcp_1_)' },
      },
      required: ['token'],
    },
  },
  {
    name: 'cloud_offload',
    label: 'Mesh: offload a task to the cloud',
    description:
      'Delegate a task to a governed kars cloud sandbox. Optionally send workspace files — they are transferred directly to the sandbox via E2E encrypted mesh (up to 30MB each). The sandbox runs with full GPU/inference capabilities and AGT governance. Results and output files are returned directly via mesh. Requires prior pairing.',
    parameters: {
      type: 'object',
      properties: {
        task: { type: 'string', description: 'The task to execute in the cloud sandbox' },
        files: {
          type: 'array',
          items: { type: 'string' },
          description: 'Workspace files to send to the sandbox (paths, up to 30MB each)',
        },
        model: { type: 'string', description: 'Inference model (default: from cluster config)' },
        timeout_minutes: { type: 'number', description: 'Maximum runtime in minutes (default: 30)' },
        force: {
          type: 'boolean',
          description:
            'Allow submitting this task even if an identical one was offloaded in the last 10 minutes. Use only when the user EXPLICITLY asks to re-run the task. If omitted/false, a duplicate task returns the existing request\'s status instead of spawning a new sandbox.',
        },
      },
      required: ['task'],
    },
  },
  {
    name: 'offload_status',
    label: 'Mesh: offload status',
    description:
      "Return a snapshot of the currently active cloud offload (state, request id, start time, last update). Non-blocking — returns immediately. Call this tool ONCE when the user asks about the status, progress, or state of a cloud offload (e.g. 'how is the offload going?', 'offload status', 'what's happening with the cloud task?'). Do NOT answer those questions from memory and do NOT tell the user to type a slash command — invoke this tool. Strict rule: call AT MOST ONCE per user message. Do NOT call it again in the same turn or in a loop — if the handler returns 'no change', stop polling and wait for the next user message or a completion event.",
    parameters: { type: 'object', properties: {} },
  },
  {
    name: 'offload_cancel',
    label: 'Mesh: cancel the offload',
    description:
      'Cancel the currently active cloud offload. Sends a cleanup signal to the controller (deletes the cloud sandbox) and clears local offload state so a new offload can be started. Use ONLY when the user explicitly asks to cancel/abort. No-op if no offload is active.',
    parameters: { type: 'object', properties: {} },
  },
  {
    name: 'mesh_send',
    label: 'Mesh: send a message',
    description:
      'Send an E2E encrypted message to another agent on the mesh. Messages use Signal Protocol (Double Ratchet) for forward secrecy.',
    parameters: {
      type: 'object',
      properties: {
        to: { type: 'string', description: 'Target agent name or AMID' },
        message: { type: 'string', description: 'Message content (will be E2E encrypted)' },
      },
      required: ['to', 'message'],
    },
  },
  {
    name: 'mesh_inbox',
    label: 'Mesh: read the inbox',
    description:
      "Read messages received via the E2E encrypted AGT mesh. ALWAYS call this tool FIRST whenever your task description says a peer agent has sent you data, output, or a reply — peer messages always arrive before you process them, so checking the inbox is your default opening move whenever you're told to consume something from another agent. Do NOT rely on what you remember from earlier turns, because new messages may have arrived since then. Default behaviour is *peek-only* and shows only entries you haven't read yet; messages stay in the inbox so you can re-read them. Pass mark_read=true once you have acted on the contents to flag them as seen, or unread_only=false to also see entries from previous turns. **Server-side blocking:** pass `block_until_message=true` (with optional `timeout_seconds`, default 120, max 300) to wait until at least one new message arrives instead of polling. The response includes a `diagnostics` block with lifecycle counters so you can tell apart 'never received' from 'already consumed by an offload waiter'.",
    parameters: {
      type: 'object',
      properties: {
        limit: { type: 'number', description: 'Max messages to return (default: 10)' },
        mark_read: { type: 'boolean', description: 'When true, flag returned entries as read.' },
        unread_only: { type: 'boolean', description: 'Default true. Set false to include entries you already read.' },
        block_until_message: {
          type: 'boolean',
          description:
            'When true, block server-side until at least one matching message arrives or `timeout_seconds` elapses. Use this instead of polling.',
        },
        timeout_seconds: {
          type: 'number',
          description: 'Maximum wait when block_until_message=true (default 120, max 300).',
        },
      },
    },
  },
  {
    name: 'mesh_await',
    label: 'Mesh: wait for peers',
    description:
      "Block server-side until ALL named peer agents have delivered at least one content message (or until timeout). Use this BEFORE assembly steps that depend on multiple sibling outputs (e.g. a writer waiting on both an analyst and a viz). The tool blocks inside a single tool call — you do NOT need to poll mesh_inbox in a loop. Returns once every requested sender has arrived, or with status 'partial_timeout' listing the missing senders. Combine with mark_read=true to flush matched entries and then call mesh_inbox to fetch the actual content.",
    parameters: {
      type: 'object',
      properties: {
        senders: {
          type: 'array',
          items: { type: 'string' },
          description:
            'Names (or amids) of peer agents you must hear from. Match is case-insensitive on the inbox `from` field.',
        },
        timeout_seconds: { type: 'number', description: 'Max wait in seconds (default 180, max 600).' },
        mark_read: {
          type: 'boolean',
          description: 'When true, mark matched messages as read on resolve. Default false.',
        },
      },
      required: ['senders'],
    },
  },
  {
    name: 'discover',
    label: 'Mesh: discover agents',
    description: 'Find agents on the mesh by capability or name.',
    parameters: {
      type: 'object',
      properties: {
        capability: { type: 'string', description: "Filter by capability (e.g., 'analysis', 'review')" },
        limit: { type: 'number', description: 'Max results (default: 20)' },
      },
    },
  },
]);

export const TOOL_NAMES = Object.freeze(TOOLS.map((t) => t.name));
