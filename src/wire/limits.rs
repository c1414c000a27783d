//! Sizes and counts the protocol itself fixes, in one place: the sandbox
//! runtime and the original plugin enforce the same numbers, so a change
//! here is a protocol change, never a local tuning.

/// A message whose JSON text is longer than this travels in chunks
/// (`mesh:transfer_manifest` + `mesh:transfer_chunk`, kars-mesh-plugin.md §7.2).
pub const CHUNK_CHARS: usize = 512 * 1024;
/// Chunks per transfer (the sandbox runtime's limit): 40 MiB of JSON text.
pub const MAX_CHUNKS: usize = 80;
/// A chunk is at most `CHUNK_CHARS` characters of at most 4 UTF-8 bytes.
pub const MAX_CHUNK_BYTES: usize = CHUNK_CHARS * 4;
/// Longest `transfer_id` a manifest or chunk may carry (it names storage).
pub const MAX_TRANSFER_ID_CHARS: usize = 128;
/// Longest `original_type` a manifest may carry.
pub const MAX_ORIGINAL_TYPE_CHARS: usize = 64;
/// A chunk hash: SHA-256 as hex.
pub const CHUNK_HASH_CHARS: usize = 64;

/// Characters a `file_transfer` message may spend on everything but its
/// base64 `file_data` (type, request id, name twice, size, hash,
/// description, sender, timestamp: about 400 with the longest names; the
/// rest is slack).
pub const FILE_ENVELOPE_CHARS: usize = 4096;
/// Largest file we send, either way: its `file_transfer` message (base64,
/// 4 characters per 3 bytes, plus at most `FILE_ENVELOPE_CHARS`) must fit
/// in `MAX_CHUNKS` chunks of `CHUNK_CHARS`, the most the sandbox runtime
/// reassembles. 80 × 512 KiB = 41,943,040 characters, less 4,096, is
/// 10,484,736 base64 quads: 31,454,208 bytes (30 MiB less 3 KiB). The
/// original's "30 MB" needs 81 chunks and was silently never sent.
pub const MAX_FILE_BYTES: usize = (MAX_CHUNKS * CHUNK_CHARS - FILE_ENVELOPE_CHARS) / 4 * 3;
/// `MAX_FILE_BYTES` as users read it.
pub const MAX_FILE_TEXT: &str = "31,454,208 bytes (30 MiB less 3 KiB)";
/// Largest file we accept from a peer: the protocol's 30 MiB (spec §7.1).
/// Tolerant on purpose: a sender with a shorter envelope than ours may fit
/// a few bytes more than `MAX_FILE_BYTES` into 80 chunks.
pub const MAX_RECEIVED_FILE_BYTES: usize = 30 * 1024 * 1024;
/// Files per offload, each way.
pub const MAX_FILES: usize = 10;
/// Longest file name either side creates, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// `offload_error.error` is cut to this many characters (spec §7.1).
pub const MAX_ERROR_CHARS: usize = 4000;
/// `offload_done.summary` is cut to this many characters (spec §7.1).
pub const MAX_SUMMARY_CHARS: usize = 8000;
/// `offload_hello.task_preview` is the task's first characters (spec §7.1).
pub const TASK_PREVIEW_CHARS: usize = 200;

/// A peer's unknown `type` is kept (and reported) up to this many
/// characters: it is only ever logged, and a peer chooses its length.
pub const MAX_TYPE_CHARS: usize = 64;

/// A name echoed back in a refusing `file_transfer_ack` is cut to this many
/// characters (it is the peer's, and may be anything).
pub const ECHOED_NAME_CHARS: usize = 120;
/// `offload_request.preferences.timeout_minutes` when absent (spec §7.1).
pub const DEFAULT_TIMEOUT_MINUTES: u64 = 30;
/// `offload_request.preferences.timeout_minutes` at most: a day (the
/// client refuses more, and so does the controller).
pub const MAX_TIMEOUT_MINUTES: u64 = 24 * 60;
/// `offload_request.task` at most, in characters (checked by both sides).
pub const MAX_TASK_CHARS: usize = 100_000;
/// The model the controller names in the sandbox's spec when the request's
/// preferences name none (the original controller's default, spec §7.3).
pub const DEFAULT_MODEL: &str = "gpt-5.4";
