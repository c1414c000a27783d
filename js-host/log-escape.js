// Escaping for log lines. Engine log messages carry peer-controlled text
// (names, file names, error strings from the network); written raw, a
// newline would forge a second log line and an ESC sequence would drive the
// operator's terminal. Every line the host writes goes through escapeLog:
//
//   \n \r \t          -> "\n" "\r" "\t" (backslash + letter)
//   other C0, DEL, C1 -> "\x1b", "\x7f", "\x9b", ...
//   U+2028, U+2029 (line/paragraph separators), bidi embedding, override and
//   isolate controls U+202A-U+202E, U+2066-U+2069, and the marks U+200E,
//   U+200F, U+061C -> "\u202e", ...
//
// A backslash is left as it is, so escaping twice changes nothing (a line
// already escaped by a node's logger is escaped again by the cluster's).

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escapeChar(c) {
  if (NAMED[c]) return NAMED[c];
  const code = c.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** `text` with every control, line-breaking or bidi character escaped (one line, inert). */
export function escapeLog(text) {
  return String(text).replace(UNSAFE, escapeChar);
}
