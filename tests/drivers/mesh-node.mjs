#!/usr/bin/env node
// Child-process driver around one kars-mesh node (js-host/node-host.js), for
// tests and benchmarks that need a client in its own process (SIGKILL,
// restart on the same state dir, two cores).
//
//   node tests/drivers/mesh-node.mjs --state DIR --relay URL --registry URL
//        [--name NAME] [--echo] [--no-reader] [--consume] [--wait-seconds S]
//
// stdout: one JSON object per line
//   {"event":"ready","did":...,"pid":...}          node started and registered
//   {"event":"message","id","from","ts","received_at","evidence","payload"}
//                                                   one per inbox message, in inbox order
//                                                   (the reader: mesh_inbox wait_seconds in a loop)
//   {"event":"reply","req":R,"ok":true,...}         answer to a command
//   {"event":"reply","req":R,"ok":false,"error":"..."}
//   {"event":"fatal","error":"..."}                 the node died; the process exits 1
// stdin: one JSON command per line ("req" is echoed in the reply)
//   {"req":1,"cmd":"send","to":DID,"text":"..."}          mesh_send (message = text)
//   {"req":1,"cmd":"send","to":DID,"message":{...}}       mesh_send (message = object)
//   ... "key":"..."                                         passed as mesh_send idempotency_key
//   {"req":2,"cmd":"inbox","wait_seconds":S,"limit":N,"mark_read":B,"ids":[...]}  (with --no-reader; peek unless mark_read)
//   {"req":3,"cmd":"identity"}                            mesh_identity details, store: group-commit totals
//   {"req":4,"cmd":"burst","to":DID,"count":N,"tag":T[,"window":W]}  N sends of
//                                                          {type:"bench",tag,n}, W in flight (default 1:
//                                                          sequential); reply {sent,ms}
//   {"req":5,"cmd":"stop"}                                stop the node, reply, exit 0 (also on EOF)
// stderr: the engine's log lines (info and above) with a timestamp.
//
// --echo: every received message whose payload is not itself an echo is
// answered with mesh_send {type:"echo", content: payload}.
//
// --consume: the reader takes messages as an agent does, marking them read
// in the waiting call itself (their read marks commit with their arrival),
// then prints them. By default it peeks, prints, then marks (one more call
// and commit per read), so that a SIGKILL between the two shows them again:
// what the tests that kill a node need, and more than the AGT peer gives
// (it persists, then prints). The benchmarks consume.
import { createNode } from '../../js-host/node-host.js';

function parseArgs(argv) {
  const o = { reader: true, echo: false, consume: false, waitSeconds: 10 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--state') o.stateDir = val();
    else if (a === '--relay') o.relayUrl = val();
    else if (a === '--registry') o.registryUrl = val();
    else if (a === '--name') o.name = val();
    else if (a === '--echo') o.echo = true;
    else if (a === '--consume') o.consume = true;
    else if (a === '--no-reader') o.reader = false;
    else if (a === '--wait-seconds') o.waitSeconds = Number(val());
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.stateDir || !o.relayUrl || !o.registryUrl) throw new Error('--state, --relay and --registry are required');
  return o;
}

// Node documents stdout on a POSIX pipe as asynchronous: a line can wait in
// this process while the parent is slow to read (a loaded machine). Lines
// that must be out before the next step (a message, before it is marked
// read) use `outFlushed`, which resolves once the kernel has the line; a
// SIGKILL after that loses nothing the parent should have seen.
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const outFlushed = (obj) =>
  new Promise((resolve, reject) => process.stdout.write(`${JSON.stringify(obj)}\n`, (e) => (e ? reject(e) : resolve())));
const stamp = () => new Date().toISOString().slice(11, 23);
const errText = (r) => r?.content?.[0]?.text ?? JSON.stringify(r);
const isError = (r) => typeof r?.content?.[0]?.text === 'string' && r.content[0].text.startsWith('❌');

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  out({ event: 'fatal', error: e.message });
  process.exit(2);
}

let node;
try {
  node = await createNode({
    stateDir: opts.stateDir,
    relayUrl: opts.relayUrl,
    registryUrl: opts.registryUrl,
    name: opts.name,
    log: (level, message) => {
      if (level !== 'debug') process.stderr.write(`[${stamp()} ${process.pid} ${level}] ${message}\n`);
    },
  });
} catch (e) {
  out({ event: 'fatal', error: `createNode: ${e.message}` });
  process.exit(1);
}

let stopping = false;
function fatal(e) {
  if (stopping) return;
  out({ event: 'fatal', error: String(e?.message ?? e) });
  process.exit(1);
}
node.closed.then((err) => { if (err) fatal(err); });

const reg = await node.callTool('mesh_register', {}).catch(fatal);
if (isError(reg)) {
  out({ event: 'fatal', error: `mesh_register: ${errText(reg)}` });
  await node.stop();
  process.exit(1);
}
out({ event: 'ready', did: node.did, pid: process.pid });

// ---- the continuous reader ----------------------------------------------
async function reader() {
  while (!stopping) {
    let r;
    try {
      // Peek, print, then mark read: a kill between the two shows the
      // messages again after the restart (the parent drops repeated inbox
      // entry ids), where marking first would lose them. --consume marks
      // them in this call.
      r = await node.callTool('mesh_inbox', opts.consume
        ? { wait_seconds: opts.waitSeconds, limit: 500, mark_read: true }
        : { wait_seconds: opts.waitSeconds, limit: 500, peek: true });
    } catch (e) {
      return fatal(e);
    }
    if (stopping) return;
    if (isError(r)) {
      process.stderr.write(`[${stamp()} ${process.pid} driver] mesh_inbox error: ${errText(r)}\n`);
      await new Promise((res) => setTimeout(res, 200));
      continue;
    }
    const batch = r.details.mesh.messages;
    for (const m of batch) await outFlushed({ event: 'message', ...m }).catch(fatal);
    if (!batch.length) continue;
    // Act (echo), and mark read in the same turn: the node commits both in
    // one batch. A kill before that commit shows the messages again after
    // the restart (acted on at least once); marking before acting would lose them.
    const echoes = opts.echo ? batch.filter((m) => !(m.payload && m.payload.type === 'echo')) : [];
    const sends = echoes.map((m) => node.callTool('mesh_send', { to: m.from, message: { type: 'echo', content: m.payload } }));
    const mark = opts.consume ? null : node.callTool('mesh_inbox', { ids: batch.map((m) => m.id), mark_read: true, limit: batch.length });
    for (const s of await Promise.all(sends).catch(fatal) ?? []) {
      if (isError(s)) process.stderr.write(`[${stamp()} ${process.pid} driver] echo failed: ${errText(s)}\n`);
    }
    const marked = await mark?.catch(fatal);
    if (marked && isError(marked)) process.stderr.write(`[${stamp()} ${process.pid} driver] marking read failed: ${errText(marked)}\n`);
  }
}
if (opts.reader) reader();

// ---- commands -----------------------------------------------------------
async function command(c) {
  const req = c.req;
  const reply = (obj) => out({ event: 'reply', req, ...obj });
  switch (c.cmd) {
    case 'send': {
      const message = c.message ?? c.text;
      const args = { to: c.to, message };
      if (c.key != null) args.idempotency_key = String(c.key);
      const r = await node.callTool('mesh_send', args);
      if (isError(r)) return reply({ ok: false, error: errText(r) });
      return reply({ ok: true, ...r.details.mesh });
    }
    case 'inbox': {
      const args = {};
      for (const k of ['wait_seconds', 'limit', 'peek', 'from', 'mark_read', 'unread_only', 'ids', 'block_until_message', 'timeout_seconds']) if (c[k] !== undefined) args[k] = c[k];
      const r = await node.callTool('mesh_inbox', args);
      if (isError(r)) return reply({ ok: false, error: errText(r) });
      return reply({ ok: true, ...r.details.mesh });
    }
    case 'identity': {
      const r = await node.callTool('mesh_identity', {});
      return reply({ ok: !isError(r), ...r.details?.mesh, store: node.storeStats() });
    }
    case 'burst': {
      const t0 = performance.now();
      let failed = 0;
      // `window` sends in flight at once (default 1: each waits for the one
      // before). The node hands them to the engine in order; with more than
      // one in flight their stores share commits.
      const window = Math.max(1, Math.min(1024, Number(c.window ?? 1) || 1));
      const inFlight = new Set();
      for (let n = 0; n < c.count; n++) {
        const p = node.callTool('mesh_send', { to: c.to, message: { type: 'bench', tag: c.tag ?? null, n } }).then((r) => {
          inFlight.delete(p);
          if (isError(r)) {
            failed++;
            process.stderr.write(`[${stamp()} ${process.pid} driver] burst send ${n} failed: ${errText(r)}\n`);
          }
        });
        inFlight.add(p);
        if (inFlight.size >= window) await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
      return reply({ ok: failed === 0, sent: c.count - failed, failed, ms: performance.now() - t0 });
    }
    case 'stop':
      await shutdown(req);
      return undefined;
    default:
      return reply({ ok: false, error: `unknown cmd ${JSON.stringify(c.cmd)}` });
  }
}

async function shutdown(req) {
  if (stopping) return;
  stopping = true;
  await node.stop();
  if (req !== undefined) out({ event: 'reply', req, ok: true });
  process.exit(0);
}

let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buf += chunk;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i).trim();
    buf = buf.slice(i + 1);
    if (!line) continue;
    let c;
    try {
      c = JSON.parse(line);
    } catch {
      out({ event: 'reply', ok: false, error: 'command is not JSON' });
      continue;
    }
    // Commands run concurrently (the engine serialises them); each gets its reply.
    command(c).catch((e) => {
      if (stopping) return;
      out({ event: 'reply', req: c.req, ok: false, error: String(e?.message ?? e), rejected: true });
    });
  }
});
process.stdin.on('end', () => shutdown());
