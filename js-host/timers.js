// The engine's timers: `timer-set [id, atMs]` fires `timer-fired id` at a
// wall-clock time (a later timer-set with the same id replaces it), and
// `timer-cancel id` cancels it.

/** setTimeout's longest delay (~24.8 days); longer waits are armed again. */
export const MAX_TIMEOUT = 2 ** 31 - 1;

/** @param {(event: object) => void} dispatch  where timer-fired goes */
export function createTimers(dispatch) {
  /** timer id (bigint) -> timeout handle */
  const timers = new Map();

  function set(id, atMs) {
    cancel(id);
    const at = Number(atMs);
    const arm = () => {
      const delay = Math.min(Math.max(at - Date.now(), 0), MAX_TIMEOUT);
      const handle = setTimeout(() => {
        if (timers.get(id) !== handle) return;
        if (Date.now() < at) return arm(); // long timer, or clock moved: wait the rest
        timers.delete(id);
        dispatch({ tag: 'timer-fired', val: id });
      }, delay);
      // Unref'd so that a CLI can exit; a pending tool call keeps the process up (tool-calls.js).
      handle.unref?.();
      timers.set(id, handle);
    };
    arm();
  }

  function cancel(id) {
    const handle = timers.get(id);
    if (handle !== undefined) {
      clearTimeout(handle);
      timers.delete(id);
    }
  }

  function clear() {
    for (const handle of timers.values()) clearTimeout(handle);
    timers.clear();
  }

  return { set, cancel, clear };
}
