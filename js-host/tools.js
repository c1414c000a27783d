// The eight OpenClaw tools of kars-mesh: the names of the original @kars/mesh
// plugin (docs/spec/kars-mesh-plugin.md §2), and its descriptions and
// parameter schemas where they are true of this engine; where they promised
// what this engine does not do, they are corrected, and the parameters the
// engine reads beyond the original's are declared (README "Tool texts" lists
// each change; tests/tools.schema.test.mjs checks the schemas against the
// engine's argument readers). The engine validates arguments and writes every
// text; these definitions only tell the model what to pass.

// The largest file either way (src/wire/limits.rs MAX_FILE_BYTES): what fits
// in 80 chunks of 512 KiB once base64-encoded, beside its message's fields.
const MAX_FILE = '31,454,208 bytes (30 MiB less 3 KiB)';

export const TOOLS = Object.freeze([
  {
    name: 'mesh_pair',
    label: 'Mesh: pair with a kars cluster',
    description:
      'One-time pairing with an kars cluster using an admin-provided token. After pairing, you can use cloud_offload to delegate tasks to sandboxes of that cluster.',
    parameters: {
      type: 'object',
      properties: {
        token: {
          type: 'string',
          description:
            'Pairing token (starts with azcp_1_). Also accepted as `pairing_token`, or nested as `arguments.token` or `params.token`.',
        },
      },
      required: ['token'],
    },
  },
  {
    name: 'cloud_offload',
    label: 'Mesh: offload a task to the cloud',
    description:
      `Delegate a task to a sandbox of the paired kars cluster. Optionally send workspace files — they are transferred directly to the sandbox via E2E encrypted mesh (at most 10, up to ${MAX_FILE} each; a larger file is refused before anything starts). What the sandbox runs is set by the cluster's operator: a kars-mesh local cluster runs the operator's --exec command, or by default runs nothing and returns a report of the task and its inputs. Results and output files are returned directly via mesh; an output that cannot be returned is named, with the reason, in offload_status. Requires prior pairing.`,
    parameters: {
      type: 'object',
      properties: {
        task: {
          type: 'string',
          maxLength: 100000,
          description:
            'The task to execute in the sandbox (at most 100,000 characters). Also accepted as `prompt`, `description`, `request`, `content`, `instruction` or `query`.',
        },
        files: {
          type: 'array',
          items: { type: 'string' },
          maxItems: 10,
          description: `Workspace files to send to the sandbox (paths, at most 10, up to ${MAX_FILE} each; no two with the same file name). Also accepted as \`file_paths\`.`,
        },
        model: {
          type: 'string',
          maxLength: 200,
          description: 'Inference model, passed to the sandbox as given (default: the cluster\'s).',
        },
        timeout_minutes: {
          type: 'number',
          minimum: 1,
          maximum: 1440,
          description: 'Maximum runtime in minutes, 1 to 1440 (default: 30). Also accepted as `timeout`.',
        },
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
      "Return a snapshot of the currently active cloud offload (state, request id, start time, last update). Non-blocking — returns immediately (unless wait_seconds is passed). Call this tool ONCE when the user asks about the status, progress, or state of a cloud offload (e.g. 'how is the offload going?', 'offload status', 'what's happening with the cloud task?'). Do NOT answer those questions from memory and do NOT tell the user to type a slash command — invoke this tool. Strict rule: call AT MOST ONCE per user message. Do NOT call it again in the same turn or in a loop — if the handler returns 'no change', stop polling and wait for the next user message or a completion event.",
    parameters: {
      type: 'object',
      properties: {
        wait_seconds: {
          type: 'number',
          minimum: 0,
          maximum: 600,
          description:
            'Wait up to this many seconds (at most 600) for news before answering: the answer comes as soon as a new event arrives or the offload ends. Where the host shows live tool progress, progress reports (bytes and chunks of a file acknowledged, the sandbox\'s own report) are streamed as updates instead, and the answer comes with other news. Default 0: answer at once.',
        },
        after_events: {
          type: 'integer',
          minimum: 0,
          description:
            'With wait_seconds: wait for events after this many (the `events_total` of the previous answer), so nothing that happened in between is missed. Default: the current count.',
        },
      },
    },
  },
  {
    name: 'offload_cancel',
    label: 'Mesh: cancel the offload',
    description:
      'Cancel the currently active cloud offload. Sends a cleanup signal to the controller (which stops the sandbox and frees its slot) and clears local offload state so a new offload can be started. Use ONLY when the user explicitly asks to cancel/abort. No-op if no offload is active.',
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
        to: {
          type: 'string',
          maxLength: 128,
          description:
            'Target agent name, DID (did:mesh:…) or AMID. A name must be registered to exactly one agent. Also accepted as `to_amid`, `to_agent`, `target`, `amid` or `recipient`.',
        },
        message: {
          type: 'string',
          description:
            'Message content (will be E2E encrypted; at most 1 MiB once encoded). Also accepted as `content`, `body` or `text`.',
        },
        idempotency_key: {
          type: 'string',
          minLength: 1,
          maxLength: 128,
          description:
            'Optional key naming this message: a second mesh_send with the same key to the same agent is not sent again (the answer says so). Use it when retrying a send whose answer you did not see.',
        },
      },
      required: ['to', 'message'],
    },
  },
  {
    name: 'mesh_inbox',
    label: 'Mesh: read the inbox',
    description:
      "Read messages received via the E2E encrypted AGT mesh (only end-to-end encrypted messages arrive here; a plaintext one appears only where the host was set up to trust its sender, and is marked unverified). ALWAYS call this tool FIRST whenever your task description says a peer agent has sent you data, output, or a reply — peer messages always arrive before you process them, so checking the inbox is your default opening move whenever you're told to consume something from another agent. Do NOT rely on what you remember from earlier turns, because new messages may have arrived since then. Default behaviour is *peek-only* and shows only entries you haven't read yet; messages stay in the inbox so you can re-read them. Pass mark_read=true once you have acted on the contents to flag them as seen, or unread_only=false to also see entries from previous turns. **Server-side blocking:** pass `block_until_message=true` (with optional `timeout_seconds`, default 120, max 300) to wait until at least one new message arrives instead of polling. The response includes a `diagnostics` block with lifecycle counters so you can tell apart 'never received' from 'taken by an offload or a pairing instead of the inbox'.",
    parameters: {
      type: 'object',
      properties: {
        limit: { type: 'number', minimum: 0, maximum: 500, description: 'Max messages to return (default: 10, at most 500; 0 also means the default)' },
        mark_read: { type: 'boolean', description: 'When true, flag returned entries as read.' },
        peek: {
          type: 'boolean',
          description: 'Older form of mark_read, inverted: peek=false flags the returned entries as read. Do not pass both.',
        },
        unread_only: { type: 'boolean', description: 'Default true. Set false to include entries you already read.' },
        from: {
          type: 'string',
          description: "Only entries from this agent: its DID (did:mesh:…) or AMID (use discover to find an agent's DID).",
        },
        ids: {
          type: 'array',
          items: { type: 'string' },
          maxItems: 1000,
          description:
            'Only the entries with these ids (each message\'s `id` in an earlier answer\'s details), e.g. to mark exactly what you read.',
        },
        block_until_message: {
          type: 'boolean',
          description:
            'When true, block server-side until at least one matching message arrives or `timeout_seconds` elapses. Use this instead of polling.',
        },
        timeout_seconds: {
          type: 'number',
          minimum: 0,
          maximum: 300,
          description: 'Maximum wait when block_until_message=true (default 120, max 300; 0 also means the default, not "do not wait").',
        },
        wait_seconds: {
          type: 'number',
          minimum: 0,
          maximum: 300,
          description: 'Older form of block_until_message: wait up to this many seconds (max 300) for a message.',
        },
      },
    },
  },
  {
    name: 'mesh_await',
    label: 'Mesh: wait for peers',
    description:
      "Block server-side until ALL named peer agents have delivered at least one content message (or until timeout). Use this BEFORE assembly steps that depend on multiple sibling outputs (e.g. a writer waiting on both an analyst and a viz). The tool blocks inside a single tool call — you do NOT need to poll mesh_inbox in a loop. Returns once every requested sender has arrived, or with status 'partial_timeout' listing the missing senders. Only unread messages count. Then call mesh_inbox to fetch the actual content (after mark_read=true, the matched entries are read: fetch them with unread_only=false).",
    parameters: {
      type: 'object',
      properties: {
        senders: {
          type: 'array',
          items: { type: 'string' },
          maxItems: 50,
          description:
            'Peer agents you must hear from: names, DIDs (did:mesh:…) or AMIDs, at most 50 of at most 128 characters. A DID or AMID matches the inbox `from` field; a name matches the one agent the registry holds under it, or an E2E encrypted message whose sender gives that name (case-insensitive).',
        },
        timeout_seconds: {
          type: 'number',
          minimum: 0,
          maximum: 600,
          description: 'Max wait in seconds (default 180, max 600; 0 also means the default, not "do not wait").',
        },
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
        capability: {
          type: 'string',
          description:
            "Filter by capability (e.g., 'analysis', 'review') or by an agent's registered name (agents register their name as a capability). Without it: kars-mesh agents and the agents this one has sessions with. Also accepted as `name` or `query`.",
        },
        limit: { type: 'number', minimum: 0, maximum: 200, description: 'Max results (default: 20, at most 200)' },
      },
    },
  },
]);

export const TOOL_NAMES = Object.freeze(TOOLS.map((t) => t.name));
