// Bad input to `kars-mesh cluster` / `pair` / `pair-with`: exit code 2 and a
// message that names the fix, before anything is created or started. A busy
// port is exit code 3, naming the port and the flag that changes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './harness/cluster.mjs';
import { tokenInText, tokenUrls } from '../js-host/cli.js';

function tmp(t) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-cluster-usage-'));
  t.after(() => fs.rmSync(home, { recursive: true, force: true }));
  return home;
}

const CASES = [
  [['pair', 'generate'], /pair generate needs --name NAME/],
  [['pair', 'generate', '--name', 'a', '--slots', 'abc'], /--slots must be a whole number from 1 to 1000, not "abc"/],
  [['pair', 'generate', '--name', 'a', '--slots', '0'], /--slots must be a whole number from 1 to 1000/],
  [['pair', 'generate', '--name', 'a', '--bogus'], /unknown flag --bogus for "pair generate"; see `kars-mesh pair generate --help`/],
  [['pair', 'generate', '--name', 'a', '--expires', '1s'], /--expires must look like 90d, 12h or 30m, not "1s"/],
  [['pair', 'generate', '--name', 'a', '--capabilities', ','], /--capabilities must be a comma-separated list like offload,handoff/],
  [['pair', 'generate', '--name', 'a', '--token-budget', '-1'], /--token-budget needs a value|--token-budget must be a whole number/],
  [['pair', 'generate', '--name'], /--name needs a value/],
  [['pair', 'revoke'], /missing <name>/],
  [['pair', 'list', 'extra'], /unexpected argument "extra"/],
  [['pair', 'list', '--slots', '1'], /--slots does not apply to "pair list"/],
  [['pair', 'frobnicate'], /unknown command "pair frobnicate"; use one of: pair generate, pair list, pair revoke/],
  [['pair'], /"pair" needs a command: pair generate, pair list, pair revoke/],
  [['cluster'], /"cluster" needs a command: cluster up, cluster down, cluster status/],
  [['cluster', 'up', '--relay-port', '70000'], /--relay-port must be a port number 1-65535, not "70000"/],
  [['cluster', 'up', '--relay-port', '9000', '--registry-port', '9000'], /--relay-port and --registry-port must differ/],
  [['cluster', 'up', '--name', 'no spaces'], /is not a usable cluster name/],
  [['cluster', 'up', '--detach=yes'], /--detach takes no value/],
  [['cluster', 'down', '--relay-port', '1'], /--relay-port does not apply to "cluster down"/],
  [['--state', '/tmp/x', 'cluster', 'up'], /put "cluster" first: kars-mesh cluster \.\.\./],
  [['pair-with'], /missing <token>/],
];

test('bad operator input: exit code 2, a message naming the fix, nothing created', { timeout: 60_000 }, async (t) => {
  const home = tmp(t);
  const dir = path.join(home, 'c');
  for (const [args, want] of CASES) {
    const withDir = args[0] === 'cluster' || args[0] === 'pair' ? [...args, '--dir', dir] : args;
    const r = await runCli(withDir, { home });
    assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, want, `${args.join(' ')}:\n${r.stderr}`);
    assert.match(r.stderr, /Usage/, `${args.join(' ')} prints the usage`);
    assert.equal(r.stdout, '');
  }
  assert.equal(fs.existsSync(dir), false, 'a usage error creates nothing');
  assert.deepEqual(fs.readdirSync(home), [], 'nor under HOME');
});

test('help for the operator commands', { timeout: 30_000 }, async (t) => {
  const home = tmp(t);
  const main = await runCli(['--help'], { home });
  assert.equal(main.code, 0);
  assert.match(main.stdout, /cluster up\|down\|status/);
  assert.match(main.stdout, /pair-with <token>/);
  for (const args of [['cluster', 'up', '--help'], ['pair', 'generate', '-h'], ['help', 'pair'], ['pair-with', '--help']]) {
    const r = await runCli(args, { home });
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, /Usage/);
  }
});

test('a busy port: exit code 3 naming the port and the flag', { timeout: 30_000 }, async (t) => {
  const home = tmp(t);
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => srv.close());
  const busy = srv.address().port;
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const free = probe.address().port;
  await new Promise((r) => probe.close(r));

  const relay = await runCli(['cluster', 'up', '--dir', path.join(home, 'a'), '--relay-port', String(busy), '--registry-port', String(free)], { home });
  assert.equal(relay.code, 3, relay.stderr);
  assert.match(relay.stderr, new RegExp(`port ${busy} \\(relay\\) is already in use on 127\\.0\\.0\\.1: pick another with --relay-port N`));
  const registry = await runCli(['cluster', 'up', '--dir', path.join(home, 'b'), '--relay-port', String(free), '--registry-port', String(busy)], { home });
  assert.equal(registry.code, 3, registry.stderr);
  assert.match(registry.stderr, /\(registry\) is already in use .* --registry-port N/);
  assert.equal(fs.existsSync(path.join(home, 'a', 'cluster.json')), false);
});

test('pair-with takes the relay and registry from the token (read by the engine)', async () => {
  const payload = { controller_amid: 'x', relay_url: 'http://127.0.0.1:1234', registry_url: 'http://127.0.0.1:1235', secret: 's' };
  const token = 'azcp_1_' + Buffer.from(JSON.stringify(payload)).toString('base64url');
  assert.deepEqual(await tokenUrls(token), { relayUrl: payload.relay_url, registryUrl: payload.registry_url });
  assert.deepEqual(await tokenUrls(` ${token.slice(0, 20)}\n${token.slice(20)} `), { relayUrl: payload.relay_url, registryUrl: payload.registry_url });
  assert.deepEqual(await tokenUrls('azcp_2_abc'), {});
  assert.deepEqual(await tokenUrls('azcp_1_!!!'), {});
});

test('pair generate names a capability kars-mesh does not know (a typo), and grants it as given', { timeout: 60_000 }, async (t) => {
  const home = tmp(t);
  const dir = path.join(home, 'c');
  const typo = await runCli(['pair', 'generate', '--name', 'typo', '--capabilities', 'ofload,handoff', '--dir', dir], { home });
  assert.equal(typo.code, 0, typo.stderr);
  assert.match(typo.stderr, /--capabilities: "ofload" is not a capability kars-mesh knows \(offload, handoff\); the pairing grants it as given/);
  assert.match(typo.stdout, /ofload/);
  const fine = await runCli(['pair', 'generate', '--name', 'fine', '--capabilities', 'offload', '--dir', dir], { home });
  assert.equal(fine.code, 0, fine.stderr);
  assert.doesNotMatch(fine.stderr, /not a capability/);
});

test('pair-with - takes the token out of what it reads: pair generate\'s whole output, or a token wrapped over lines', () => {
  const token = 'azcp_1_' + Buffer.from(JSON.stringify({ controller_amid: 'x', relay_url: 'http://127.0.0.1:1234', registry_url: 'http://127.0.0.1:1235', secret: 's' })).toString('base64url');
  const generated = `✅ Pairing "t" created (slots 1, expires in 30 days)\nToken (give it to the user, it is shown once):\n${token}\n`;
  assert.equal(tokenInText(generated), token);
  assert.equal(tokenInText(`Here is your token:\n\n${token.slice(0, 30)}\n${token.slice(30, 70)}\n${token.slice(70)}\n\nThanks`), token);
  assert.equal(tokenInText(`  ${token}  `), token);
  assert.equal(tokenInText('no token here'), 'no token here');
  // The standard base64 alphabet (the core reads it too), and a word right
  // after a whole token, which is not part of it (a review's cases).
  const standard = 'azcp_1_' + Buffer.from(JSON.stringify({ controller_amid: 'x', relay_url: 'http://127.0.0.1:1234', registry_url: 'http://127.0.0.1:1235', secret: 's>>>??' })).toString('base64');
  assert.match(standard, /[+/]/);
  assert.equal(tokenInText(`${standard}\n`), standard);
  assert.equal(tokenInText(`${token}\nCheers`), token);
  assert.equal(tokenInText(`${token.slice(0, 40)}\n${token.slice(40)}\n--\nBob`), token);
});
