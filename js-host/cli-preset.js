// `kars-mesh preset`: print (or write) the NemoClaw network policy preset for
// one relay and one registry (js-host/preset.js), to apply with
// `nemoclaw <sandbox> policy add --from-file kars-mesh.yaml --dry-run`, then
// `--yes`. Needs no state directory and starts no node.

import fs from 'node:fs';
import path from 'node:path';
import { EXIT } from './cli-output.js';
import { PRESET_NAME, PresetError, presetFor } from './preset.js';
import { UsageError, checkArguments, parseArgv, resolveDir } from './flags.js';

export const PRESET_SUMMARY = [['preset [--relay URL] [--registry URL] [--out FILE]', 'the NemoClaw network policy preset for that relay and registry']];

export const PRESET_USAGE = `Usage: kars-mesh preset [--relay URL] [--registry URL] [--out FILE]

Print the NemoClaw network policy preset that lets the kars-mesh plugin in a
NemoClaw (OpenShell) sandbox reach this relay and this registry, and nothing
else: the relay as one WebSocket endpoint, the registry as a REST endpoint
with exactly the methods and paths kars-mesh sends. Apply it with:

  nemoclaw <sandbox> policy add --from-file ${PRESET_NAME}.yaml --dry-run
  nemoclaw <sandbox> policy add --from-file ${PRESET_NAME}.yaml --yes

  --relay URL      relay base URL, as in the plugin's relay_url (env KARS_MESH_RELAY)
  --registry URL   registry base URL, as in registry_url (env KARS_MESH_REGISTRY)
  --out FILE       write the preset to FILE instead of stdout; NemoClaw wants the
                   file named ${PRESET_NAME}.yaml (the preset's name)
  -h, --help       show this help`;

const FLAGS = { relay: { value: true }, registry: { value: true }, out: { value: true }, help: { value: false } };

/** Exit code of `kars-mesh preset ...` (argv without "preset"). */
export function mainPreset(argv, { out, err, env = process.env }) {
  let flags;
  try {
    const parsed = parseArgv(argv, { flags: FLAGS, short: { h: 'help' }, command: () => 'preset' });
    flags = parsed.flags;
    if (flags.help) {
      out(PRESET_USAGE);
      return EXIT.OK;
    }
    checkArguments(parsed.words, { required: [], optional: [] }, 'preset');
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`kars-mesh preset: ${e.message}`);
    err(PRESET_USAGE);
    return EXIT.USAGE;
  }
  const relayUrl = flags.relay ?? env.KARS_MESH_RELAY;
  const registryUrl = flags.registry ?? env.KARS_MESH_REGISTRY;
  const missing = [!relayUrl && '--relay URL', !registryUrl && '--registry URL'].filter(Boolean);
  if (missing.length) {
    err(`kars-mesh preset: pass ${missing.join(' and ')}: the relay and registry the sandboxed plugin uses (its relay_url and registry_url)`);
    return EXIT.USAGE;
  }
  let preset;
  try {
    preset = presetFor({ relayUrl, registryUrl });
  } catch (e) {
    if (!(e instanceof PresetError)) throw e;
    err(`kars-mesh preset: ${e.message}`);
    return EXIT.USAGE;
  }
  for (const w of preset.warnings) err(`kars-mesh preset: warning: ${w}`);
  if (flags.out) {
    const file = resolveDir(flags.out);
    if (path.basename(file) !== `${PRESET_NAME}.yaml`) {
      err(`kars-mesh preset: warning: NemoClaw expects the file name to match the preset's name: ${PRESET_NAME}.yaml`);
    }
    try {
      fs.writeFileSync(file, preset.yaml);
    } catch (e) {
      const why = e.code === 'ENOENT' ? `its directory ${path.dirname(file)} does not exist` : e.code === 'EACCES' || e.code === 'EPERM' ? 'this user may not write there' : e.code === 'EISDIR' ? 'it is a directory' : e.message;
      err(`kars-mesh preset: cannot write ${file}: ${why}. Give --out a file in an existing directory you can write, or leave --out out to print the preset.`);
      return EXIT.USAGE;
    }
    err(`kars-mesh preset: wrote ${file}; next: nemoclaw <sandbox> policy add --from-file ${file} --dry-run`);
  } else {
    out(preset.yaml.replace(/\n$/, ''));
  }
  return EXIT.OK;
}
