// Helpers for the `kars-mesh cluster` / `pair` tests: run the CLI (spawned,
// private HOME, no KARS_MESH_* from the caller, killed after a deadline), and
// make sure every process a cluster started is gone afterwards.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/kars-mesh', import.meta.url));

export function cleanEnv(extra = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KARS_MESH_')));
  return { ...clean, ...extra };
}

/** Run bin/kars-mesh; resolves {code, signal, stdout, stderr}. */
export function runCli(args, { home = os.tmpdir(), env = {}, timeoutMs = 60_000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: cleanEnv({ HOME: home, USERPROFILE: home, ...env }),
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    if (input !== undefined) child.stdin.end(input);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** true when the pid names a live (non-zombie) process. */
export function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The pids <dir>/cluster.json lists (cluster process, relay, registry). */
export function clusterPids(dir) {
  try {
    const st = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8'));
    return [st.main?.pid, st.relay?.process?.pid, st.registry?.process?.pid].filter(Number.isInteger);
  } catch {
    return [];
  }
}

/**
 * Last-resort cleanup: SIGKILL the given pids (and their process groups) if
 * they still run. The relay and registry also die with their parent
 * (PR_SET_PDEATHSIG), so killing the cluster process takes them along.
 */
export function killAll(pids) {
  for (const pid of pids) {
    if (!alive(pid)) continue;
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        /* not a group, or gone */
      }
    }
  }
}

export async function waitGone(pids, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (pids.every((p) => !alive(p))) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return pids.every((p) => !alive(p));
}

export function tokenIn(text) {
  return text.match(/azcp_1_[A-Za-z0-9_-]+/)?.[0];
}
