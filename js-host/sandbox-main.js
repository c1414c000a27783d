#!/usr/bin/env node
// A sandbox peer, started by a controller's host (js-host/jobs.js):
//
//   node js-host/sandbox-main.js --state DIR --spec FILE --relay URL --registry URL
//        [--exec CMD [--exec-unisolated] [--hide PATH]...]
//
// --hide: paths the --exec command must not see (the controller passes its
// state directory, the sandboxes directory, the cluster directory); this
// sandbox's own state directory is hidden too (js-host/jobs.js).
//
// Runs the engine with role "sandbox" (src/agent/sandbox.rs): its own
// identity, registered under the sandbox name, working for one requester.
// Prints one line `{"ready":"did:mesh:..."}` on stdout once registered, then
// keeps running until SIGTERM, or until its time is up (the task's timeout
// plus a margin for returning the result).

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createNode } from './node-host.js';
import { escapeLog } from './log-escape.js';

const LINGER_MS = 15 * 60_000;

function fail(msg) {
  process.stderr.write(`kars-mesh sandbox: ${escapeLog(msg)}\n`);
  process.exit(1);
}

const { values } = parseArgs({
  options: {
    state: { type: 'string' },
    spec: { type: 'string' },
    relay: { type: 'string' },
    registry: { type: 'string' },
    exec: { type: 'string' },
    'exec-unisolated': { type: 'boolean' },
    hide: { type: 'string', multiple: true },
  },
});
for (const k of ['state', 'spec', 'relay', 'registry']) if (!values[k]) fail(`--${k} is required`);

let spec;
try {
  spec = JSON.parse(readFileSync(values.spec, 'utf8'));
} catch (e) {
  fail(`cannot read the spec ${values.spec}: ${e.message}`);
}

const log = (level, message) => {
  if (level !== 'debug') process.stderr.write(`[${new Date().toISOString()}] ${level} ${escapeLog(message)}\n`);
};

let node;
try {
  node = await createNode({
    stateDir: values.state,
    relayUrl: values.relay,
    registryUrl: values.registry,
    name: spec.name,
    capabilities: ['kars-sandbox'],
    sandbox: spec,
    exec: values.exec,
    execUnisolated: !!values['exec-unisolated'],
    execHide: values.hide ?? [],
    log,
  });
} catch (e) {
  fail(e.message);
}

const reg = await node.callTool('mesh_register', {}, { timeoutMs: 60_000 }).catch((e) => ({ error: e }));
const regText = reg?.content?.[0]?.text ?? String(reg?.error?.message ?? '');
if (reg?.error || regText.startsWith('❌')) {
  await node.stop();
  fail(`registration failed: ${regText}`);
}
process.stdout.write(`${JSON.stringify({ ready: node.did })}\n`);

let stopping = false;
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  await node.stop().catch(() => {});
  process.exit(code);
}
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => shutdown(0));
const lifetime = (Number(spec.timeout_minutes) || 30) * 60_000 + LINGER_MS;
setTimeout(() => shutdown(0), lifetime);
node.closed.then((err) => {
  if (!stopping) {
    if (err) process.stderr.write(`kars-mesh sandbox: ${escapeLog(err.message)}\n`);
    process.exit(err ? 1 : 0);
  }
});
