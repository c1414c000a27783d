// The README's local-cluster walk-through, command by command, through
// bin/kars-mesh only (as a new user runs it): cluster up, pair generate,
// pair-with, offload with an input file (built-in executor: it runs nothing
// and returns a report of what it received), cluster down. Then the same
// with `--exec`. Every process the cluster started must be gone at the end.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './harness/servers.mjs';
import { alive, clusterPids, killAll, runCli, tokenIn, waitGone } from './harness/cluster.mjs';

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-walk-'));
const seenPids = new Set();
const dirs = [];

after(async () => {
  for (const dir of dirs) {
    for (const p of clusterPids(dir)) seenPids.add(p);
    if (fs.existsSync(path.join(dir, 'cluster.json'))) await runCli(['cluster', 'down', '--dir', dir], { home, timeoutMs: 30_000 });
  }
  killAll([...seenPids]);
  await waitGone([...seenPids], 5000);
  fs.rmSync(home, { recursive: true, force: true });
});

const cli = (args, opts = {}) => runCli(args, { home, timeoutMs: 120_000, ...opts });

async function waitForCli(run, ok, ms = 20_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (ok(await run())) return true;
    await new Promise((r) => setTimeout(r, 300));
  }
  return false;
}

function sandboxPids(dir) {
  const root = path.join(dir, 'sandboxes');
  if (!fs.existsSync(root)) return [];
  return fs.readdirSync(root).flatMap((n) => {
    try {
      return [JSON.parse(fs.readFileSync(path.join(root, n, 'job.json'), 'utf8')).pid];
    } catch {
      return [];
    }
  });
}

/**
 * Collect every sandbox pid that appears under <dir>/sandboxes until stop():
 * a sandbox's directory (its job.json with it) is erased when it ends, so
 * reading it once after the offload, or after `cluster down`, finds nothing.
 */
function watchSandboxes(dir) {
  const pids = new Set();
  const look = () => {
    for (const p of sandboxPids(dir)) {
      pids.add(p);
      seenPids.add(p);
    }
  };
  // unref: a failed assertion before stop() must not keep the test process alive.
  const timer = setInterval(look, 20).unref();
  return { pids, stop: () => (clearInterval(timer), look()) };
}

async function walk(name, upExtra, check) {
  const dir = path.join(home, name);
  dirs.push(dir);
  const ports = ['--registry-port', String(await freePort()), '--relay-port', String(await freePort())];
  const up = await cli(['cluster', 'up', '--detach', '--dir', dir, ...ports, ...upExtra]);
  // Read now: `cluster down` deletes cluster.json, and with it these pids.
  const started = clusterPids(dir);
  for (const p of started) seenPids.add(p);
  assert.equal(up.code, 0, `${up.stdout}\n${up.stderr}`);
  assert.equal(started.length, 3, `cluster.json should list the cluster process (the controller), the relay and the registry: ${started}`);
  for (const p of started) assert.ok(alive(p), `pid ${p} from cluster.json is not running after cluster up`);
  // Which executor the sandboxes run is said where the cluster comes up.
  assert.match(up.stdout, upExtra.includes('--exec') ? /\n {2}sandboxes {3}run \S+count\.sh\n/ : /\n {2}sandboxes {3}the built-in executor: it runs nothing/);
  const sandboxes = watchSandboxes(dir);

  const gen = await cli(['pair', 'generate', '--dir', dir, '--name', 'laptop', '--slots', '1', '--capabilities', 'offload,handoff', '--expires', '30d']);
  assert.equal(gen.code, 0, gen.stderr);
  const token = tokenIn(gen.stdout);
  const state = path.join(home, `${name}-agent`);
  // As the README has it: `pair generate > token.txt`, then `pair-with - <
  // token.txt`, the lines around the token included (they were taken for
  // the token, and the node started on the default relay).
  assert.ok(token && gen.stdout.trim() !== token, 'pair generate prints more than the token');
  const paired = await cli(['--state', state, 'pair-with', '-'], { input: gen.stdout });
  assert.equal(paired.code, 0, `${paired.stdout}\n${paired.stderr}`);
  assert.match(paired.stdout, /Paired successfully with kars cluster/);
  // It says that later commands go to this cluster's relay and registry.
  assert.match(paired.stdout, /This agent now uses relay http:\/\/127\.0\.0\.1:\d+ and registry http:\/\/127\.0\.0\.1:\d+ for later commands \(kept in .*endpoints\.json/);

  const input = path.join(home, `${name}-notes.txt`);
  fs.writeFileSync(input, 'quarterly numbers: 1, 2, 3\n');
  // No --relay/--registry: pair-with remembered the cluster's for this state directory.
  const off = await cli(['--state', state, 'offload', 'summarise the notes', '--file', input, '--timeout', '5']);
  assert.equal(off.code, 0, `${off.stdout}\n${off.stderr}`);
  for (const phase of ['validating', 'spawning', 'ready', 'acknowledged', 'running', 'returning', 'done']) {
    assert.match(off.stdout, new RegExp(`\\b${phase}\\b`), `phase ${phase} not printed:\n${off.stdout}`);
  }
  const outputs = [...off.stdout.matchAll(/→ (.+)$/gm)].map((m) => m[1]);
  assert.ok(outputs.length > 0, off.stdout);
  assert.ok(sandboxes.pids.size > 0, `no sandbox process was seen under ${dir}/sandboxes while the offload ran`);
  await check({ off, outputs, input, state, dir });

  const down = await cli(['cluster', 'down', '--dir', dir]);
  sandboxes.stop();
  assert.equal(down.code, 0, down.stderr);
  const all = [...started, ...sandboxes.pids];
  assert.ok(await waitGone(all, 5000), `still running 5 s after cluster down: ${all.filter(alive).map((p) => `${p} (${started.includes(p) ? 'cluster.json' : 'sandbox'})`).join(', ')}`);
}

test('walk-through: cluster up, pair, offload with the built-in executor, cluster down', { timeout: 240_000 }, async () => {
  await walk('builtin', [], async ({ off, outputs, input, state }) => {
    assert.match(off.stdout, /Built-in executor: received the task \(\d+ characters\) and 1 input file\(s\)/);
    // The same command again within 10 minutes starts nothing: said with the
    // CLI's flag, and not exit 0 (a script would take the first run's result).
    const again = await cli(['--state', state, 'offload', 'summarise the notes', '--file', input, '--timeout', '5']);
    assert.equal(again.code, 1, `${again.stdout}\n${again.stderr}`);
    assert.match(again.stdout, /already offloaded \d+s ago — not starting a new sandbox/);
    assert.match(again.stdout, /Add --force to run it again\./);
    assert.doesNotMatch(again.stdout + again.stderr, /force=true/);
    const report = fs.readFileSync(outputs.find((p) => p.endsWith('report.md')), 'utf8');
    const bytes = fs.readFileSync(input);
    assert.ok(report.includes(`notes.txt — ${bytes.length} bytes — sha256 ${createHash('sha256').update(bytes).digest('hex')}`), report);
    assert.ok(report.includes('summarise the notes'));
    // Received files are private.
    assert.equal(fs.statSync(outputs[0]).mode & 0o077, 0);
    // The sandbox took itself out of the registry as it stopped: discover
    // does not list it, and nobody can send it a message no one would read.
    const sandboxName = /sandbox (offload-[0-9a-f]+) is up/.exec(off.stdout)?.[1];
    assert.ok(sandboxName, off.stdout);
    const gone = await waitForCli(() => cli(['--state', state, 'discover', '--json']), (r) => r.code === 0 && !r.stdout.includes(sandboxName), 15_000);
    assert.ok(gone, `discover still lists the finished sandbox ${sandboxName}`);
  });
});

test('walk-through with --exec: the operator command runs in the sandbox', { timeout: 240_000 }, async () => {
  const script = path.join(home, 'count.sh');
  fs.writeFileSync(script, '#!/bin/sh\ncase "$KARS_TASK" in *slow*) sleep 60;; esac\nwc -c "$KARS_INPUT_DIR"/* > "$KARS_OUTPUT_DIR/counts.txt"\necho "counted for: $KARS_TASK"\n', { mode: 0o755 });
  await walk('exec', ['--exec', script], async ({ off, outputs, input, state, dir }) => {
    assert.match(off.stdout, /counted for: summarise the notes/);
    const counts = fs.readFileSync(outputs.find((p) => p.endsWith('counts.txt')), 'utf8');
    assert.match(counts, /27 .*notes\.txt/);
    // --no-follow with an input file returns once the file has left: with
    // no client running after it, the sandbox has its input and finishes
    // (it used to wait 10 minutes for an input that only a later run of
    // the client sent, then fail). The sandbox runs its command only once
    // every input is there.
    const quiet = await cli(['--state', state, 'offload', 'count the notes unattended', '--file', input, '--no-follow']);
    assert.equal(quiet.code, 0, `${quiet.stdout}\n${quiet.stderr}`);
    assert.match(quiet.stdout, /The input files have left; the offload goes on without this command/);
    const name = /sandbox (offload-[0-9a-f]+) is up/.exec(quiet.stdout)?.[1];
    assert.ok(name, quiet.stdout);
    const sandboxLog = path.join(dir, 'sandboxes', name, 'sandbox.log');
    const finished = () => fs.existsSync(sandboxLog) && fs.readFileSync(sandboxLog, 'utf8').includes(`sandbox ${name}: done`);
    let done = false;
    for (const until = Date.now() + 30_000; !(done = finished()) && Date.now() < until; ) await new Promise((r) => setTimeout(r, 200));
    assert.ok(done, `the sandbox of the --no-follow offload did not finish without a client running:\n${fs.existsSync(sandboxLog) ? fs.readFileSync(sandboxLog, 'utf8') : '(no log)'}`);
    const later = await cli(['--state', state, 'offload-status', '--wait', '60']);
    assert.equal(later.code, 0, `${later.stdout}\n${later.stderr}`);
    const counted = [...later.stdout.matchAll(/→ (.+)$/gm)].map((m) => m[1]).find((p) => p.endsWith('counts.txt'));
    assert.ok(counted, later.stdout);
    assert.match(fs.readFileSync(counted, 'utf8'), /27 .*notes\.txt/);
    // One-shot commands deliver what they queue before they exit: a
    // --no-follow submission starts a sandbox, a cancel frees the slot.
    const sub = await cli(['--state', state, 'offload', 'slow count', '--no-follow']);
    assert.equal(sub.code, 0, sub.stderr);
    const busy = await waitForCli(() => cli(['pair', 'list', '--dir', dir]), (r) => /slots 1\/1/.test(r.stdout));
    assert.ok(busy, 'the --no-follow offload never reached the controller');
    const cancel = await cli(['--state', state, 'offload-cancel']);
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.match(cancel.stdout, /cancelled/);
    const list = await cli(['pair', 'list', '--dir', dir]);
    assert.match(list.stdout, /slots 0\/1/, `the cancel did not reach the controller before offload-cancel exited:\n${list.stdout}`);
  });
  // Up again without --exec (ports and name come back, the command does
  // not): said on the terminal and in the log, where a walk-through's
  // offloads had "finished" with the built-in executor's report unnoticed.
  const dir = path.join(home, 'exec');
  const again = await cli(['cluster', 'up', '--detach', '--dir', dir]);
  for (const p of clusterPids(dir)) seenPids.add(p);
  assert.equal(again.code, 0, `${again.stdout}\n${again.stderr}`);
  assert.match(again.stdout, /sandboxes {3}the built-in executor: it runs nothing/);
  assert.match(again.stderr, /warning: the last cluster up in .* ran --exec ".*count\.sh"; this one runs the built-in executor/);
  assert.match(fs.readFileSync(path.join(dir, 'cluster.log'), 'utf8'), /the last cluster up in .* ran --exec ".*count\.sh"; this one runs the built-in executor, which runs no command: give --exec again to run it/);
  const down = await cli(['cluster', 'down', '--dir', dir]);
  assert.equal(down.code, 0, down.stderr);
});
