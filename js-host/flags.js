// How both `kars-mesh` command lines read argv (cli.js: the agent commands;
// cli-operator.js: `cluster` and `pair`), so that a flag is written the same
// way everywhere:
//   --flag VALUE or --flag=VALUE; -h and -v; `--` ends the flags; `-` is a
//   word (stdin), not a flag.
// A value never starts with `--`: `--wait --json` is a forgotten value, not
// the value "--json" (`--name=--x` says that on purpose).
//
// Every mistake is a UsageError that names the flag or argument; the caller
// prints it above the usage of the command it is about (its `topic`).

import os from 'node:os';
import path from 'node:path';

/** A command-line mistake. `topic`: the command whose usage goes with it (undefined: the general usage). */
export class UsageError extends Error {
  constructor(message, topic) {
    super(message);
    this.name = 'UsageError';
    this.topic = topic;
  }
}

/**
 * Split argv into words (the command first, then its arguments) and flags.
 *
 * @param {string[]} argv
 * @param {object} o
 * @param {Record<string, {value?: boolean, multi?: boolean}>} o.flags  every flag this command line
 *   knows (whether a command takes it is checked afterwards, with onlyFlags): `value` takes a value,
 *   `multi` may be repeated (its values in order, as an array); other flags are true when given
 * @param {Record<string, string>} [o.short]  one-letter aliases, e.g. { h: 'help' }
 * @param {(word: string) => any} [o.command]  sees the first word as soon as it is met and returns
 *   the topic of the mistakes after it (default: the word itself); it throws to refuse an unknown
 *   command before a flag after it is blamed
 * @param {(flag: string, topic: any) => string} [o.unknown]  the text for an unknown --flag
 * @returns {{ words: string[], flags: Record<string, string|string[]|true> }}
 * @throws {UsageError}
 */
export function parseArgv(argv, { flags: known, short = {}, command = (word) => word, unknown = (flag) => `unknown flag ${flag}` }) {
  const flags = {};
  const words = [];
  let topic;
  let endOfFlags = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (endOfFlags || arg === '-' || !arg.startsWith('-')) {
      if (!words.length) topic = command(arg);
      words.push(arg);
      continue;
    }
    if (arg === '--') {
      endOfFlags = true;
      continue;
    }
    let name;
    let value;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      if (eq !== -1) value = arg.slice(eq + 1);
      if (!Object.hasOwn(known, name)) throw new UsageError(unknown(`--${name}`, topic), topic);
    } else {
      name = Object.hasOwn(short, arg.slice(1)) ? short[arg.slice(1)] : undefined;
      if (!name) throw new UsageError(`unknown flag ${arg}`, topic);
    }
    const spec = known[name];
    if (!spec.value) {
      if (value !== undefined) throw new UsageError(`--${name} takes no value`, topic);
      flags[name] = true;
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) throw new UsageError(`--${name} needs a value`, topic);
      value = argv[++i];
    }
    if (spec.multi) (flags[name] ??= []).push(value);
    else flags[name] = value;
  }
  return { words, flags };
}

/** Refuse a flag that `label` (the command, as the user wrote it) does not take. */
export function onlyFlags(flags, allowed, label, topic) {
  for (const f of Object.keys(flags)) {
    if (!allowed.includes(f)) throw new UsageError(`--${f} does not apply to "${label}"`, topic);
  }
}

/**
 * Refuse too few or too many arguments. `required` and `optional` name them
 * (they appear as <did> <message>); with `rest` the last one takes every word left.
 */
export function checkArguments(args, { required = [], optional = [], rest = false }, topic) {
  if (args.length < required.length) {
    throw new UsageError(`missing ${required.slice(args.length).map((p) => `<${p}>`).join(' ')}`, topic);
  }
  const takes = required.length + optional.length;
  if (!rest && args.length > takes) {
    const extra = args[takes];
    // A long word is likely part of a secret split by a line wrap (a pairing
    // token pasted unquoted): say it is there, not what it is.
    const shown = extra.length <= 40 && !/azcp_/i.test(args.join(' ')) ? JSON.stringify(extra) : `(${extra.length} characters, not shown)`;
    const token = required.includes('token')
      ? `; if it is the rest of the token, put the whole token in quotes, or pass - to read it from standard input`
      : '';
    throw new UsageError(`unexpected argument ${shown}${token}`, topic);
  }
}

/** A directory given on the command line: a leading ~ is the home directory. */
export function resolveDir(raw) {
  return path.resolve(raw.replace(/^~(?=$|[\\/])/, os.homedir()));
}
