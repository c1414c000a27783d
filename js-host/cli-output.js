// What both `kars-mesh` command lines (cli.js, cli-operator.js) make of an
// engine tool result and of the engine's log, and the exit codes they share.

import { escapeLog } from './log-escape.js';
import { CLI_WORDS, inWords } from './tool-words.js';

export const EXIT = Object.freeze({ OK: 0, TOOL_ERROR: 1, USAGE: 2, UNREACHABLE: 3, INTERRUPTED: 130 });

/** The result's text parts, or the whole result as JSON when it has none. */
export function resultText(result) {
  const texts = Array.isArray(result?.content)
    ? result.content.filter((c) => c && c.type === 'text' && typeof c.text === 'string').map((c) => c.text)
    : [];
  return texts.length ? texts.join('\n') : JSON.stringify(result);
}

export { CLI_WORDS };

/** mesh_inbox ends its text with the engine's counters as one JSON line (ENGINE.md). */
const DIAGNOSTICS = /\n\nDiagnostics: \{.*\}$/s;

/**
 * A tool text as a shell user reads it: tool vocabulary replaced by the
 * command that does it, and mesh_inbox's raw diagnostics line only with
 * --verbose (--json has the whole result).
 */
export function cliText(text, { verbose = false } = {}) {
  let t = String(text);
  if (!verbose) t = t.replace(DIAGNOSTICS, '');
  return inWords(t, CLI_WORDS);
}

/** The engine marks an error result both ways (js-host/ENGINE.md); either one counts. */
export function isErrorResult(result) {
  const first = result?.content?.[0]?.text;
  return (typeof first === 'string' && first.startsWith('❌')) || result?.details?.mesh?.error != null;
}

/** Relay problems that waiting does not cure: the relay refused us (link.rs ProblemKind). */
const REFUSALS = new Set(['token', 'identity', 'connect_frame', 'replaced']);

/** The relay refused this agent (a token, its identity proof, another instance): retrying will not help. */
export function relayRefused(status) {
  return REFUSALS.has(status?.relay_problem_kind);
}

/**
 * Why the relay is not working for this agent, from mesh_identity's
 * details (`connected`, `relay_problem`, `relay_error`), as one sentence
 * naming the relay; undefined while the relay has accepted the connection.
 */
export function relayTrouble(status, relayUrl) {
  if (!status || status.connected) return undefined;
  if (status.relay_problem) return `${status.relay_problem} (relay ${relayUrl})`;
  if (status.relay_error) return `the relay at ${relayUrl} cannot be reached: ${status.relay_error}`;
  return `the relay at ${relayUrl} has not accepted the connection yet`;
}

/**
 * A node's `log` option for a command: warnings and errors always reach
 * stderr, the rest with -v. `longRunning`: the process stays up (a cluster
 * in the foreground), so the core's "retrying in 30 s" is kept; a one-shot
 * command usually ends before that retry, and without -v the promise is
 * left out.
 */
export function stderrLog(err, verbose, { longRunning = false } = {}) {
  const errors = new Set();
  const log = (level, message) => {
    if (!verbose && level !== 'warn' && level !== 'error') return;
    const text = verbose || longRunning ? message : String(message).replace(RETRY_NOTE, '');
    if (level === 'error') errors.add(String(message));
    err(`kars-mesh ${level}: ${escapeLog(text)}`);
  };
  /**
   * Whether `message` was printed as an error line already: a node that
   * stops logs why, and the call it fails then rejects with the same text,
   * which is not printed a second time.
   */
  log.said = (message) => errors.has(String(message)) || errors.has(escapeLog(String(message)));
  return log;
}

/** The core's "…; retrying in 30 s" at the end of a log line. */
const RETRY_NOTE = /; retrying in \d+ s$/;
