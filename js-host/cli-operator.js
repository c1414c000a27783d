// Operator commands of the `kars-mesh` CLI: a local kars cluster and its
// pairing tokens (js-host/cluster.js, js-host/control.js).
//
//   kars-mesh cluster up|down|status [flags]
//   kars-mesh pair generate|list|revoke [flags]
//
// `pair` talks to the running cluster's controller over <dir>/control.sock;
// with no cluster running it opens the controller's state directory itself.
// Exit codes as in cli.js: 0 ok, 1 error, 2 usage, 3 unreachable/environment.

import fs from 'node:fs';
import {
  ClusterError,
  clusterConfig,
  clusterDown,
  clusterPaths,
  clusterStatus,
  defaultClusterDir,
  detachCluster,
  dirFlag,
  runCluster,
  urlFor,
} from './cluster.js';
import { NoControlSocket, controlCall } from './control.js';
import { makeDirs } from './storage-fs.js';
import { EXIT, cliText, isErrorResult, resultText, stderrLog } from './cli-output.js';
import { UsageError, checkArguments, onlyFlags, parseArgv, resolveDir } from './flags.js';

const DIR_HELP = `  --dir DIR            the cluster's directory (env KARS_MESH_CLUSTER_DIR, default ~/.kars-mesh-cluster)`;

const SUB = {
  cluster: {
    up: {
      usage: 'kars-mesh cluster up [--dir DIR] [--relay-port N] [--registry-port N] [--name CLUSTER] [--exec CMD [--exec-unisolated]] [--detach]',
      help: `Start a local kars cluster: the AgentMesh registry and relay on 127.0.0.1 and a
controller node that keeps the pairing ledger. Runs in the foreground until
Ctrl-C; with --detach it runs in the background (stop it with cluster down).
${DIR_HELP}
  --registry-port N    registry port (default 8082, or the last one used in DIR)
  --relay-port N       relay port (default 8083, or the last one used in DIR)
  --name CLUSTER       cluster name reported to clients (default "local", or the last one)
  --exec CMD           command for sandbox processes (passed to the controller); it
                       runs in its own mount/pid/user namespace that hides DIR (the
                       controller's keys, every sandbox) but its work directory,
                       and is not run at all where that isolation is unavailable
  --exec-unisolated    run the --exec command without that isolation (it can then
                       read the cluster's keys); only where namespaces are unavailable
  --detach             run in the background; log in DIR/cluster.log
  -v, --verbose        also print the controller's info log lines`,
      flags: ['dir', 'relay-port', 'registry-port', 'name', 'exec', 'exec-unisolated', 'detach', 'verbose'],
      positional: [],
    },
    down: {
      usage: 'kars-mesh cluster down [--dir DIR]',
      help: `Stop the cluster running in DIR (the processes listed in DIR/cluster.json).
Pairings and the controller's identity stay in DIR.
${DIR_HELP}`,
      flags: ['dir'],
      positional: [],
    },
    status: {
      usage: 'kars-mesh cluster status [--dir DIR] [--json]',
      help: `Show what runs in DIR. Exit code 0 when the cluster runs and is healthy,
3 when it does not run or does not answer.
${DIR_HELP}
  --json               print DIR/cluster.json`,
      flags: ['dir', 'json'],
      positional: [],
    },
  },
  pair: {
    generate: {
      usage: 'kars-mesh pair generate --name NAME [--slots N] [--capabilities offload,handoff] [--expires 90d] [--token-budget N] [--dir DIR]',
      help: `Create a pairing and print its one-time token (azcp_1_...). The token is shown
once and not stored; give it to the user, who saves it in a file and pairs with
  kars-mesh pair-with - < token.txt
  --name NAME          the pairing's name (required; letters, digits, '-')
  --slots N            sandbox slots granted (default 1)
  --capabilities LIST  comma-separated (default offload,handoff)
  --expires AGE        how long the token stays valid: 90d, 12h or 30m (default 90d)
  --token-budget N     token budget reported to the client (default 500000)
${DIR_HELP}
  --json               print the whole tool result as JSON`,
      flags: ['name', 'slots', 'capabilities', 'expires', 'token-budget', 'dir', 'json'],
      positional: [],
    },
    list: {
      usage: 'kars-mesh pair list [--dir DIR] [--json]',
      help: `List the pairings of the cluster's controller.
${DIR_HELP}
  --json               print the whole tool result as JSON`,
      flags: ['dir', 'json'],
      positional: [],
    },
    revoke: {
      usage: 'kars-mesh pair revoke <name> [--dir DIR]',
      help: `Revoke a pairing: its token (if unused) is refused from now on.
${DIR_HELP}`,
      flags: ['dir', 'json'],
      positional: ['name'],
    },
  },
};

// Every flag of the operator commands (which command takes which: SUB[group][sub].flags).
const FLAGS = {
  dir: { value: true },
  'relay-port': { value: true },
  'registry-port': { value: true },
  name: { value: true },
  exec: { value: true },
  slots: { value: true },
  capabilities: { value: true },
  expires: { value: true },
  'token-budget': { value: true },
  detach: {},
  json: {},
  verbose: {},
  help: {},
  'exec-unisolated': {},
};
const SHORT = { h: 'help', v: 'verbose' };

export function operatorUsage(group) {
  const subs = group ? [group] : Object.keys(SUB);
  const lines = subs.flatMap((g) => Object.values(SUB[g]).map((s) => `  ${s.usage.slice('kars-mesh '.length)}`));
  return `Usage:\n${lines.join('\n')}\n\nRun \`kars-mesh ${group ?? 'cluster'} <command> --help\` for details.`;
}

/** [synopsis, summary] lines for the main usage of cli.js. */
export const OPERATOR_SUMMARY = [
  ['cluster up|down|status', 'run a local kars cluster (registry, relay, controller)'],
  ['pair generate|list|revoke', "pairing tokens of the local cluster's controller"],
];

/** The usage of `group sub`. */
function subUsage(group, sub) {
  const spec = SUB[group][sub];
  return `Usage: ${spec.usage}\n\n${spec.help}`;
}

/** What a pairing can grant that kars-mesh clients use (src/wire/pairing_msg.rs). */
const KNOWN_CAPABILITIES = ['offload', 'handoff'];

/** Parse `cluster ...` / `pair ...` argv (argv[0] is the group). Throws UsageError (its topic: the sub-command). */
export function planOperator(argv, env = process.env) {
  const group = argv[0];
  const subs = () => Object.keys(SUB[group]).map((s) => `${group} ${s}`).join(', ');
  const { words, flags } = parseArgv(argv.slice(1), {
    flags: FLAGS,
    short: SHORT,
    // Refused as soon as it is met: a flag after an unknown command is not the mistake.
    command: (sub) => {
      if (!Object.hasOwn(SUB[group], sub)) throw new UsageError(`unknown command "${group} ${sub}"; use one of: ${subs()}`);
      return sub;
    },
    unknown: (flag, sub) => `unknown flag ${flag}${sub ? ` for "${group} ${sub}"` : ''}; see \`kars-mesh ${group} ${sub ?? '<command>'} --help\``,
  });
  const [sub, ...positional] = words;
  if (sub === undefined) {
    if (flags.help) return { help: operatorUsage(group) };
    throw new UsageError(`"${group}" needs a command: ${subs()}`);
  }
  const spec = SUB[group][sub];
  if (flags.help) return { help: subUsage(group, sub) };
  onlyFlags(flags, spec.flags, `${group} ${sub}`, sub);
  checkArguments(positional, { required: spec.positional }, sub);

  const dirRaw = flags.dir ?? defaultClusterDir(env);
  if (!dirRaw) throw new UsageError('--dir needs a directory', sub);
  const dir = resolveDir(dirRaw);
  const run = { group, sub, dir, json: !!flags.json, verbose: !!flags.verbose, notes: [] };

  const port = (flag) => {
    const v = flags[flag];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < 1 || n > 65535) throw new UsageError(`--${flag} must be a port number 1-65535, not ${JSON.stringify(v)}`, sub);
    return n;
  };

  if (group === 'cluster' && sub === 'up') {
    run.relayPort = port('relay-port');
    run.registryPort = port('registry-port');
    if (run.relayPort !== undefined && run.relayPort === run.registryPort) {
      throw new UsageError('--relay-port and --registry-port must differ', sub);
    }
    if (flags.name !== undefined) {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(flags.name)) {
        throw new UsageError(`--name ${JSON.stringify(flags.name)} is not a usable cluster name: use letters, digits, '.', '_' and '-' (at most 63)`, sub);
      }
      run.name = flags.name;
    }
    if (flags.exec !== undefined) {
      if (!flags.exec.trim()) throw new UsageError('--exec needs a command', sub);
      run.exec = flags.exec;
    }
    if (flags['exec-unisolated']) {
      if (run.exec === undefined) throw new UsageError('--exec-unisolated applies to an --exec command: pass --exec CMD too', sub);
      run.execUnisolated = true;
    }
    run.detach = !!flags.detach;
    // Re-passed to the background process (without --detach and --dir).
    run.passArgs = [];
    if (run.relayPort !== undefined) run.passArgs.push('--relay-port', String(run.relayPort));
    if (run.registryPort !== undefined) run.passArgs.push('--registry-port', String(run.registryPort));
    if (run.name !== undefined) run.passArgs.push('--name', run.name);
    if (run.exec !== undefined) run.passArgs.push('--exec', run.exec);
    if (run.execUnisolated) run.passArgs.push('--exec-unisolated');
    if (run.verbose) run.passArgs.push('--verbose');
  }

  if (group === 'pair') {
    if (sub === 'generate') {
      if (flags.name === undefined) throw new UsageError('pair generate needs --name NAME (the pairing\'s name, e.g. --name alice-laptop)', sub);
      if (!/[A-Za-z0-9]/.test(flags.name)) throw new UsageError(`--name ${JSON.stringify(flags.name)} needs at least one letter or digit`, sub);
      const args = { name: flags.name };
      if (flags.slots !== undefined) {
        if (!/^\d+$/.test(flags.slots) || Number(flags.slots) < 1 || Number(flags.slots) > 1000) {
          throw new UsageError(`--slots must be a whole number from 1 to 1000, not ${JSON.stringify(flags.slots)}`, sub);
        }
        args.slots = Number(flags.slots);
      }
      if (flags.capabilities !== undefined) {
        const caps = flags.capabilities.split(',').map((c) => c.trim()).filter(Boolean);
        if (!caps.length || caps.some((c) => !/^[a-z0-9][a-z0-9_.-]*$/.test(c))) {
          throw new UsageError(`--capabilities must be a comma-separated list like offload,handoff, not ${JSON.stringify(flags.capabilities)}`, sub);
        }
        args.capabilities = caps;
        // Granted as given (a kars cluster may know more), but a typo
        // ("ofload") used to pass unnoticed until the client's offload was
        // refused.
        const unknown = caps.filter((c) => !KNOWN_CAPABILITIES.includes(c));
        if (unknown.length) {
          run.notes.push(`--capabilities: ${unknown.map((c) => JSON.stringify(c)).join(', ')} ${unknown.length > 1 ? 'are' : 'is'} not a capability kars-mesh knows (${KNOWN_CAPABILITIES.join(', ')}); the pairing grants it as given`);
        }
      }
      if (flags.expires !== undefined) {
        if (!/^\d+[dhm]$/.test(flags.expires) || /^0+[dhm]$/.test(flags.expires)) {
          throw new UsageError(`--expires must look like 90d, 12h or 30m, not ${JSON.stringify(flags.expires)}`, sub);
        }
        args.expires = flags.expires;
      }
      if (flags['token-budget'] !== undefined) {
        if (!/^\d+$/.test(flags['token-budget']) || !Number.isSafeInteger(Number(flags['token-budget']))) {
          throw new UsageError(`--token-budget must be a whole number ≥ 0, not ${JSON.stringify(flags['token-budget'])}`, sub);
        }
        args.token_budget = Number(flags['token-budget']);
      }
      run.tool = 'pair_generate';
      run.args = args;
    } else if (sub === 'list') {
      run.tool = 'pair_list';
      run.args = {};
    } else {
      if (!positional[0].trim()) throw new UsageError('empty <name>', sub);
      run.tool = 'pair_revoke';
      run.args = { name: positional[0] };
    }
  }
  return { run };
}

function formatPairings(pairings) {
  if (!pairings.length) return 'No pairings.';
  const rows = pairings.map((p) => [
    p.name,
    p.phase,
    `slots ${p.slots_used}/${p.slots_max}`,
    (p.capabilities ?? []).join(',') || '-',
    `expires ${Number.isFinite(p.expires_ms) ? new Date(p.expires_ms).toISOString().replace(/\.\d+Z$/, 'Z') : '?'}`,
    p.bound_did ?? '-',
  ]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n');
}

/** Run a pairing tool: on the running cluster's controller, else on its state directory. */
async function pairTool(run, { log, createNodeImpl }) {
  const p = clusterPaths(run.dir);
  try {
    return { result: await controlCall(p.sock, run.tool, run.args), via: 'cluster' };
  } catch (e) {
    if (!(e instanceof NoControlSocket)) throw new ClusterError(`${e.message}; is the cluster healthy? (kars-mesh cluster status${dirFlag(run.dir)})`, 3);
  }
  // No cluster runs: open the controller's state directory (no network needed for these tools).
  if (run.tool !== 'pair_generate' && !fs.existsSync(p.controller)) {
    throw new ClusterError(`no cluster state in ${run.dir} (${p.controller} does not exist): start one with kars-mesh cluster up${dirFlag(run.dir)}`, 1);
  }
  // A generate where no cluster ever ran makes its controller here (tokens
  // can be handed out before the first `cluster up`), which a mistyped
  // --dir does too: said, with what the token needs.
  const fresh = !fs.existsSync(p.controller);
  const cfg = clusterConfig(run.dir);
  const { createNode } = createNodeImpl ? { createNode: createNodeImpl } : await import('./node-host.js');
  makeDirs(run.dir, 0o700);
  let node;
  try {
    node = await createNode({
      stateDir: p.controller,
      relayUrl: urlFor(cfg.relayPort),
      registryUrl: urlFor(cfg.registryPort),
      name: `${cfg.name}-controller`,
      role: 'controller',
      clusterName: cfg.name,
      log,
    });
  } catch (e) {
    if (e?.name === 'StateDirError') {
      throw new ClusterError(`${e.message}\n(a cluster may be starting or stopping in ${run.dir}; check kars-mesh cluster status${dirFlag(run.dir)} and retry)`, 3);
    }
    throw new ClusterError(`cannot open the controller in ${p.controller}: ${e?.message ?? e}`, 3);
  }
  try {
    const result = await node.callTool(run.tool, run.args, { timeoutMs: 30_000 });
    const note = fresh
      ? `no cluster has run in ${run.dir} yet: its controller was made now, and this token works once \`kars-mesh cluster up${dirFlag(run.dir)}\` runs it (relay ${urlFor(cfg.relayPort)}). Meant another cluster? Revoke this pairing and give that cluster's --dir`
      : undefined;
    return { result, via: 'state dir', note };
  } finally {
    await node.stop();
  }
}

/**
 * Run an operator command. Returns the exit code.
 * @param {string[]} argv  starting with "cluster" or "pair"
 */
export async function mainOperator(argv, { out, err, env = process.env, signal, createNodeImpl }) {
  let p;
  try {
    p = planOperator(argv, env);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`kars-mesh: ${e.message}`);
    err(e.topic ? subUsage(argv[0], e.topic) : operatorUsage(argv[0]));
    return EXIT.USAGE;
  }
  if (p.help) {
    out(p.help);
    return EXIT.OK;
  }
  const run = p.run;
  for (const note of run.notes ?? []) err(`kars-mesh: ${note}`);
  const log = stderrLog(err, run.verbose, { longRunning: run.group === 'cluster' && run.sub === 'up' && !run.detach });
  try {
    if (run.group === 'cluster') {
      if (run.sub === 'up') {
        if (run.detach) return await detachCluster(run.passArgs, { dir: run.dir, out, err, signal, env });
        return await runCluster(
          {
            dir: run.dir,
            relayPort: run.relayPort,
            registryPort: run.registryPort,
            name: run.name,
            exec: run.exec,
            execUnisolated: run.execUnisolated,
            verbose: run.verbose,
            mode: env.KARS_MESH_CLUSTER_DETACHED === '1' ? 'detached' : 'foreground',
          },
          { out, err, signal, env, createNodeImpl },
        );
      }
      if (run.sub === 'down') {
        const r = await clusterDown(run.dir);
        out(r.lines.join('\n'));
        if (r.running) out(`✅ cluster in ${run.dir} stopped (pairings and identity are kept there)`);
        return EXIT.OK;
      }
      const s = await clusterStatus(run.dir);
      if (run.json) out(JSON.stringify(s.state ?? null, null, 2));
      else out(s.lines.join('\n'));
      return s.running && s.healthy ? EXIT.OK : EXIT.UNREACHABLE;
    }

    const { result, note } = await pairTool(run, { log, createNodeImpl });
    const failed = isErrorResult(result);
    if (note && !failed) err(`kars-mesh: ${note}`);
    if (run.json) out(JSON.stringify(result, null, 2));
    else if (failed) err(cliText(resultText(result)));
    else if (run.tool === 'pair_list') out(formatPairings(result?.details?.mesh?.pairings ?? []));
    else out(cliText(resultText(result)));
    if (!failed && run.tool === 'pair_generate' && !run.json) {
      err(`On the client: kars-mesh pair-with - < token.txt   (the token saved in a file; or the mesh_pair tool with {"token": "<token>"})`);
    }
    return failed ? EXIT.TOOL_ERROR : EXIT.OK;
  } catch (e) {
    if (e instanceof ClusterError) {
      err(`kars-mesh: ${e.message}`);
      return e.exitCode;
    }
    throw e;
  }
}
