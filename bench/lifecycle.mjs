// Shared by the bench scripts that run the relay/registry and client
// processes (mesh.mjs, offload.mjs, warm-up.mjs, placement.mjs): bounded
// waits, a clean stop on SIGINT/SIGTERM/SIGHUP, and how a run ends.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** `p`, or a rejection naming `what` after `ms`. */
export function within(p, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${typeof what === 'function' ? what() : what}: no answer after ${ms / 1000} s`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

// A loop whose awaits may all settle without I/O (an in-process node answers
// a tool call from microtasks) must give timers and signals a turn.
export const yieldToLoop = () => new Promise((r) => setImmediate(r));

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let stopFn = null;
let stopping = false;
function onSignal(sig) {
  const code = 128 + os.constants.signals[sig];
  if (stopping) process.exit(code);
  stopping = true;
  process.stdout.write(`\n# ${sig}: stopping the clients and the relay/registry; no results written\n`);
  setTimeout(() => process.exit(code), 10_000).unref();
  Promise.resolve()
    .then(() => stopFn?.())
    .catch(() => {})
    .finally(() => process.exit(code));
}

/**
 * On SIGINT/SIGTERM/SIGHUP run `stop` (bounded to 10 s; a second signal exits
 * at once), then exit with 128 + the signal's number. Call it again after
 * anything that adds handlers of its own (the servers harness exits at once
 * on a signal): only ours are kept. The exit hooks of the harness and of the
 * client wrappers still SIGKILL whatever is left.
 */
export function takeOverSignals(stop) {
  stopFn = stop;
  for (const sig of SIGNALS) {
    for (const l of process.listeners(sig)) if (l !== onSignal) process.off(sig, l);
    if (!process.listeners(sig).includes(onSignal)) process.on(sig, onSignal);
  }
}

/**
 * Print a run's results and, unless `noWrite`, write them to `dir/file`
 * (the bench's results file, named in the README).
 */
export function emitResults(text, { dir, file, noWrite }) {
  console.log(text);
  if (noWrite) return;
  writeFileSync(path.join(dir, file), text);
  console.log(`# wrote bench/${file}`);
}

/** Run `main`, then `stop`; exit 0, or 1 with `script`'s error after stopping. */
export function runBench(script, main, stop) {
  main()
    .then(() => stop())
    .then(() => process.exit(0))
    .catch(async (e) => {
      console.error(`${script}: ${e?.stack ?? e}`);
      await stop();
      process.exit(1);
    });
}
