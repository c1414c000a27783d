// Tool calls into the engine. A call is a `tool-call` event with a fresh id;
// the engine settles it with a `tool-result` command carrying that id. A
// caller that gives up (abort signal, timeout) sends `tool-abort`, so the
// engine stops waiting on its behalf too (mesh_inbox and mesh_await block).
// Shared by the Node host and the browser host (no Node module needed).

import { NodeError, errorText } from './node-error.js';
import { MAX_TIMEOUT } from './timers.js';

/**
 * @param {object} o
 * @param {(event: object) => void} o.dispatch  where tool-call and tool-abort go
 * @param {(level: string, message: string) => void} o.log
 * @param {() => Error|null} o.refusal  why no call may start now (the node is stopped or dead), or null
 */
export function createToolCalls({ dispatch, log, refusal }) {
  /** callId -> { resolve, reject, cleanup } */
  const pending = new Map();
  let keepAlive = null;

  function updateKeepAlive() {
    // Timers are unref'd so a CLI can exit; a pending tool call keeps the process up.
    if (pending.size > 0 && !keepAlive) keepAlive = setInterval(() => {}, 1 << 30);
    else if (pending.size === 0 && keepAlive) {
      clearInterval(keepAlive);
      keepAlive = null;
    }
  }

  /** The engine's tool-result command. */
  function settle(callId, resultJson) {
    const p = pending.get(callId);
    if (!p) {
      log('debug', 'host: tool result for a call nobody waits for (aborted or timed out)');
      return;
    }
    pending.delete(callId);
    p.cleanup();
    updateKeepAlive();
    let value;
    try {
      value = JSON.parse(resultJson);
    } catch (e) {
      p.reject(new NodeError(`the core returned a tool result that is not JSON: ${errorText(e)}`, { cause: e }));
      return;
    }
    p.resolve(value);
  }

  /** Every call still waiting rejects with `err` (the node stopped or died). */
  function rejectAll(err) {
    for (const [callId, p] of pending) {
      pending.delete(callId);
      p.cleanup();
      p.reject(err);
    }
    updateKeepAlive();
  }

  /**
   * Invoke an engine tool (node.callTool). Resolves with the parsed result
   * object (`{content:[{type:"text",text}], details:{mesh:{...}}}`), including
   * error results (text starting with ❌); rejects only when the host cannot
   * get an answer: aborted, timed out, node stopped or dead.
   */
  function call(tool, args = {}, { signal, timeoutMs } = {}) {
    const refused = refusal();
    if (refused) return Promise.reject(refused);
    if (typeof tool !== 'string' || !tool) return Promise.reject(new TypeError('tool must be a non-empty string'));
    if (signal?.aborted) return Promise.reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    let argsJson;
    try {
      argsJson = JSON.stringify(args ?? {});
    } catch (e) {
      return Promise.reject(new TypeError(`tool arguments are not JSON-serialisable: ${errorText(e)}`));
    }
    const callId = globalThis.crypto.randomUUID();
    return new Promise((resolve, reject) => {
      let timer = null;
      const giveUp = (err) => {
        if (!pending.has(callId)) return;
        pending.delete(callId);
        cleanup();
        updateKeepAlive();
        reject(err);
        dispatch({ tag: 'tool-abort', val: callId });
      };
      const onAbort = () => giveUp(signal.reason ?? new DOMException('aborted', 'AbortError'));
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      pending.set(callId, { resolve, reject, cleanup });
      updateKeepAlive();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs > 0) {
        timer = setTimeout(
          () => giveUp(new NodeError(`${tool} did not answer within ${timeoutMs} ms`, { code: 'KARS_MESH_TIMEOUT' })),
          Math.min(timeoutMs, MAX_TIMEOUT),
        );
      }
      dispatch({ tag: 'tool-call', val: { callId, tool, argsJson } });
    });
  }

  return { call, settle, rejectAll };
}
