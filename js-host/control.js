// The control channel of a running local cluster (js-host/cluster.js): a Unix
// domain socket <dir>/control.sock (the directory is 0700, the socket 0600)
// through which the operator commands (`kars-mesh pair ...`) reach the
// controller node, which holds the state-directory lock.
//
// Protocol: newline-delimited JSON. The client writes `{"tool":..., "args":{...}}`
// and reads one line back: the tool result (`{content:[...], details:{mesh:{...}}}`),
// or an error result of the same shape. Only the pairing tools are allowed.
//
// Nothing here logs a request or a result: pair_generate's result holds the
// one-time token.

import fs from 'node:fs';
import net from 'node:net';

export const CONTROL_TOOLS = Object.freeze(['pair_generate', 'pair_list', 'pair_revoke']);
const MAX_LINE = 64 * 1024;
const CALL_TIMEOUT_MS = 30_000;

function errorResult(text) {
  return { content: [{ type: 'text', text: `❌ ${text}` }], details: { mesh: { error: text } } };
}

/**
 * Listen on `sockPath`. `call(tool, args)` runs a tool on the controller and
 * resolves with its result. A stale socket file (nobody listening) is replaced;
 * a live one is an error (another cluster uses this directory).
 * @returns {Promise<{ close: () => Promise<void> }>}
 */
export async function startControlServer(sockPath, call, { log = () => {} } = {}) {
  if (fs.existsSync(sockPath)) {
    if (await listening(sockPath)) {
      throw new Error(`${sockPath} is in use: another cluster runs on this directory`);
    }
    fs.rmSync(sockPath, { force: true });
  }
  const conns = new Set();
  const server = net.createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => {});
    sock.setEncoding('utf8');
    let buf = '';
    let chain = Promise.resolve();
    sock.on('data', (chunk) => {
      buf += chunk;
      if (buf.length > MAX_LINE && !buf.includes('\n')) {
        sock.end(JSON.stringify(errorResult('request too long')) + '\n');
        buf = '';
        return;
      }
      let nl;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        // One request at a time per connection, answered in order.
        chain = chain.then(() => answer(line)).then((res) => {
          if (!sock.destroyed) sock.write(JSON.stringify(res) + '\n');
        });
      }
    });
  });

  async function answer(line) {
    let req;
    try {
      req = JSON.parse(line);
    } catch {
      return errorResult('the request is not JSON; send {"tool": ..., "args": {...}} on one line');
    }
    const tool = req?.tool;
    if (!CONTROL_TOOLS.includes(tool)) {
      return errorResult(`tool ${JSON.stringify(tool)} is not allowed on the control socket; allowed: ${CONTROL_TOOLS.join(', ')}`);
    }
    const args = req.args && typeof req.args === 'object' && !Array.isArray(req.args) ? req.args : {};
    try {
      return await call(tool, args);
    } catch (e) {
      log('warn', `control: ${tool} failed: ${e?.message ?? e}`);
      return errorResult(`the controller could not answer ${tool}: ${e?.message ?? e}`);
    }
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(sockPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(sockPath, 0o600);

  return {
    async close() {
      await new Promise((resolve) => {
        server.close(() => resolve());
        for (const c of conns) c.destroy();
      });
      try {
        fs.rmSync(sockPath, { force: true });
      } catch {
        /* best effort */
      }
    },
  };
}

/** true when something accepts connections on the socket. */
export function listening(sockPath, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const s = net.connect(sockPath);
    const t = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(t); resolve(false); });
  });
}

/** An error meaning "no cluster listens there" (the caller falls back to the state dir). */
export class NoControlSocket extends Error {
  constructor(message, cause) {
    super(message, { cause });
    this.name = 'NoControlSocket';
  }
}

/**
 * Call a tool through the control socket. Rejects with NoControlSocket when
 * nothing listens (no socket file, connection refused), with Error otherwise.
 */
export function controlCall(sockPath, tool, args = {}, { timeoutMs = CALL_TIMEOUT_MS + 5000 } = {}) {
  return new Promise((resolve, reject) => {
    let connected = false;
    let buf = '';
    const s = net.connect(sockPath);
    s.setEncoding('utf8');
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the cluster did not answer ${tool} within ${timeoutMs} ms on ${sockPath}`));
    }, timeoutMs);
    s.once('connect', () => {
      connected = true;
      s.write(JSON.stringify({ tool, args }) + '\n');
    });
    s.on('data', (chunk) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl === -1) return;
      clearTimeout(timer);
      s.destroy();
      try {
        resolve(JSON.parse(buf.slice(0, nl)));
      } catch (e) {
        reject(new Error(`the cluster answered with something that is not JSON: ${e.message}`));
      }
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      if (!connected && ['ENOENT', 'ECONNREFUSED', 'ENOTSOCK'].includes(e.code)) {
        reject(new NoControlSocket(`no cluster listens on ${sockPath}`, e));
      } else {
        reject(new Error(`control socket ${sockPath}: ${e.message}`, { cause: e }));
      }
    });
    s.once('close', () => {
      clearTimeout(timer);
      if (connected && !buf.includes('\n')) reject(new Error(`the cluster closed ${sockPath} without answering`));
    });
  });
}
