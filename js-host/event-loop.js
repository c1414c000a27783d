// The one road into the engine. Every event (tool calls, WebSocket callbacks,
// fetch completions, timer fires, jobs) goes through dispatch(event). The
// engine handles one event at a time, and the commands of each handle() call
// are carried out in order before the next event: events that arrive
// meanwhile wait in a queue, so the engine always sees the effects of its
// commands in the order it issued them (js-host/ENGINE.md).

import { NodeError, errorText } from './node-error.js';

/**
 * @param {object} o
 * @param {{ handle(event: object): object[] }} o.engine
 * @param {() => Error|null} o.takeHostFault  the fault a host import recorded since the last call, cleared
 * @param {Record<string, (val: any) => void>} o.commands  command tag -> what carries it out
 * @param {(level: string, message: string) => void} o.log
 * @param {(err: Error) => void} o.onDeath  the node died: settle what waits, release everything
 */
export function createEventLoop({ engine, takeHostFault, commands, log, onDeath }) {
  /** 'running' | 'stopping' (only the stop event still reaches the engine) | 'stopped' */
  let state = 'running';
  /** Why the node died (trap, failed write), if it did. */
  let fatal = null;
  const queue = [];
  let draining = false;

  function dispatch(event) {
    if (state !== 'running' && event.tag !== 'stop') {
      return; // after `stop` the core hears nothing more
    }
    queue.push(event);
    if (draining) return; // the running drain picks it up, in order
    draining = true;
    try {
      while (queue.length && !fatal) handleOne(queue.shift());
    } finally {
      draining = false;
      if (fatal) queue.length = 0;
    }
  }

  function handleOne(event) {
    takeHostFault(); // one recorded outside handle() is not this call's
    let cmds;
    try {
      cmds = engine.handle(event);
    } catch (e) {
      die(new NodeError(`the kars-mesh core failed (${errorText(e)}); this node is stopped, restart it`, {
        cause: e,
        code: e?.code === 'KARS_MESH_CORE_MEMORY' ? e.code : 'KARS_MESH_CORE_TRAP',
      }));
      return;
    }
    // A host import failed during the call: the core went on with a made-up
    // answer, so none of its commands may be carried out.
    const fault = takeHostFault();
    if (fault) {
      die(new NodeError(`${fault.message}; this node is stopped, restart it`, { cause: fault, code: 'KARS_MESH_HOST_FAULT' }));
      return;
    }
    for (const cmd of cmds) {
      perform(cmd);
      if (fatal) return;
    }
  }

  function perform(cmd) {
    const carryOut = Object.hasOwn(commands, cmd.tag) ? commands[cmd.tag] : undefined;
    if (carryOut) carryOut(cmd.val);
    else log('warn', `host: ignoring unknown engine command ${JSON.stringify(cmd?.tag)}`);
  }

  /** The core trapped or a durable write failed: nothing more may reach the core. */
  function die(err) {
    if (fatal) return;
    fatal = err;
    log('error', err.message);
    queue.length = 0;
    onDeath(err);
  }

  return {
    dispatch,
    die,
    get fatal() {
      return fatal;
    },
    get state() {
      return state;
    },
    /** From now on only the stop event reaches the engine. */
    beginStop() {
      state = 'stopping';
    },
    /** Nothing reaches the engine any more. */
    end() {
      state = 'stopped';
    },
  };
}
