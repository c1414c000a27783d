// The errors of the hosts (node-host.js, the browser host and the modules they
// compose). No Node module: the browser host imports this too.

/** An error from the host itself (the node is stopped, the core trapped, a write failed). */
export class NodeError extends Error {
  constructor(message, { cause, code } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'NodeError';
    this.code = code ?? 'KARS_MESH_NODE';
  }
}

/** One line for any thrown value; fetch hides why it failed in `cause` (ECONNREFUSED ...), so that is added. */
export function errorText(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  let msg = e.message || String(e);
  const cause = e.cause;
  if (cause && typeof cause === 'object') {
    const detail = cause.code && cause.message && !cause.message.includes(cause.code)
      ? `${cause.code} ${cause.message}`
      : cause.message || cause.code;
    if (detail && !msg.includes(detail)) msg += `: ${detail}`;
  }
  return msg;
}

/** An error about the state (directory, or the browser's database) that a user can act on (CLI exit code 3). */
export class StateDirError extends Error {
  constructor(message, { cause, code } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'StateDirError';
    this.code = code ?? 'KARS_MESH_STATE_DIR';
  }
}

/**
 * Why a start gave no identity, as both hosts (node-host.js and the console's
 * engine worker) read it: the core's error lines while it started (else the
 * identity call's text), and whether they are settings the engine refused
 * (`configuration: …`, not a problem with the stored identity), and among
 * those the display name alone (which the console lets the user change).
 */
export function startRefusal(startErrors, identity) {
  const why = startErrors.length ? startErrors.join('; ') : identity?.content?.[0]?.text ?? 'no DID';
  const settings = /(^|; )configuration: /.test(why);
  return {
    why,
    settings,
    nameOnly: settings && why.split('; ').every((l) => /^configuration: the name ".*" cannot be sent to /.test(l)),
    /** `why` without the `configuration: ` marks. */
    settingsText: why.replace(/(^|; )configuration: /g, '$1'),
  };
}
