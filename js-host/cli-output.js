// What both `kars-mesh` command lines (cli.js, cli-operator.js) make of an
// engine tool result and of the engine's log, and the exit codes they share.

import { escapeLog } from './log-escape.js';

export const EXIT = Object.freeze({ OK: 0, TOOL_ERROR: 1, USAGE: 2, UNREACHABLE: 3, INTERRUPTED: 130 });

/** The result's text parts, or the whole result as JSON when it has none. */
export function resultText(result) {
  const texts = Array.isArray(result?.content)
    ? result.content.filter((c) => c && c.type === 'text' && typeof c.text === 'string').map((c) => c.text)
    : [];
  return texts.length ? texts.join('\n') : JSON.stringify(result);
}

/** The engine marks an error result both ways (js-host/ENGINE.md); either one counts. */
export function isErrorResult(result) {
  const first = result?.content?.[0]?.text;
  return (typeof first === 'string' && first.startsWith('❌')) || result?.details?.mesh?.error != null;
}

/** A node's `log` option for a command: warnings and errors always reach stderr, the rest with -v. */
export function stderrLog(err, verbose) {
  return (level, message) => {
    if (verbose || level === 'warn' || level === 'error') err(`kars-mesh ${level}: ${escapeLog(message)}`);
  };
}
