// The tool schemas a model reads (js-host/tools.js) against what the engine
// really reads and does. OpenClaw does not validate arguments, so a parameter
// the engine reads but the schema does not declare is one a model never
// learns of, and a declared one the engine ignores is a promise it breaks.
// The engine's argument names are taken from its argument readers in the
// Rust sources (one function or file per tool, below), so a new parameter
// fails this test until the schema declares it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TOOLS } from '../js-host/tools.js';
import { isToolFailure } from '../js-host/plugin.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = (rel) => readFileSync(path.join(ROOT, rel), 'utf8');

// Where each tool reads its arguments: a file and the functions in it that
// read them (null: the whole file reads only this tool's arguments).
const READERS = {
  mesh_pair: ['src/pairing/client.rs', ['checked_token', 'find_token']],
  cloud_offload: ['src/tools/offload_args.rs', null],
  offload_status: ['src/offload/client.rs', ['offload_status_tool']],
  offload_cancel: ['src/offload/client.rs', ['offload_cancel']],
  mesh_send: ['src/agent/tools/mesh_send.rs', ['send_args']],
  mesh_inbox: ['src/agent/tools/mesh_inbox.rs', ['parse']],
  mesh_await: ['src/agent/tools/mesh_await.rs', ['parse']],
  discover: ['src/agent/tools/discover.rs', ['start']],
};

/** The text of `fn name(...) { ... }` in `text` (braces matched, strings skipped). */
function fnBody(text, name) {
  const at = text.search(new RegExp(`fn ${name}\\b[^(]*\\(`));
  assert.ok(at >= 0, `fn ${name} not found`);
  let i = text.indexOf('{', text.indexOf(')', at));
  const start = i;
  let depth = 0;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
    } else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return text.slice(start, i + 1);
  }
  throw new Error(`unbalanced fn ${name}`);
}

const quoted = (list) => [...list.matchAll(/"([^"]+)"/g)].map((m) => m[1]);

/** Top-level argument names the engine reads for `tool`. */
function engineNames(tool) {
  const [file, fns] = READERS[tool];
  const text = src(file);
  const body = fns ? fns.map((f) => fnBody(text, f)).join('\n') : text;
  const names = new Set();
  const readers = /args::(?:number|boolean|string|strings|first)\(\s*[\w&.]+\s*,\s*(?:&\[([^\]]*)\]|"([^"]+)")/g;
  for (const m of body.matchAll(readers)) for (const n of m[1] ? quoted(m[1]) : [m[2]]) names.add(n);
  for (const m of body.matchAll(/\.get\("([^"]+)"\)/g)) names.add(m[1]);
  for (const m of body.matchAll(/\b(?:args|a)\["([^"]+)"\]/g)) names.add(m[1]);
  // Alias lists kept in a constant (`TASK_ALIASES`) and used in the body.
  for (const m of text.matchAll(/const (\w+): \[&str; \d+\] = \[([\s\S]*?)\];/g)) {
    if (!fns || body.includes(m[1])) for (const n of quoted(m[2])) names.add(n);
  }
  return names;
}

const byName = Object.fromEntries(TOOLS.map((t) => [t.name, t]));

/** Names a schema's descriptions give as other spellings: `name` or `name.token`. */
function aliasesIn(def) {
  const out = new Set();
  for (const p of Object.values(def.parameters.properties)) {
    const also = /Also accepted as ([^.]*(?:\.\w+[^.]*)*)\./.exec(p.description ?? '');
    if (also) for (const m of also[1].matchAll(/`([\w]+)(?:\.\w+)?`/g)) out.add(m[1]);
  }
  return out;
}

test('the readers are found: every tool but offload_cancel reads arguments, the known ones among them', () => {
  assert.deepEqual(Object.keys(READERS).sort(), TOOLS.map((t) => t.name).sort());
  const some = {
    mesh_pair: ['token', 'pairing_token', 'arguments', 'params'],
    cloud_offload: ['task', 'prompt', 'query', 'files', 'file_paths', 'timeout_minutes', 'timeout', 'model', 'force'],
    offload_status: ['wait_seconds', 'after_events'],
    mesh_send: ['to', 'to_amid', 'recipient', 'message', 'body', 'idempotency_key'],
    mesh_inbox: ['limit', 'peek', 'mark_read', 'wait_seconds', 'from', 'ids'],
    mesh_await: ['senders', 'timeout_seconds', 'mark_read'],
    discover: ['capability', 'name', 'query', 'limit'],
  };
  for (const [tool, names] of Object.entries(some)) {
    const got = engineNames(tool);
    for (const n of names) assert.ok(got.has(n), `${tool}: the scan misses ${n} (found ${[...got]})`);
  }
  assert.deepEqual([...engineNames('offload_cancel')], []);
});

test('every argument the engine reads is declared (a property, or an alias its property names)', () => {
  for (const def of TOOLS) {
    const declared = new Set([...Object.keys(def.parameters.properties), ...aliasesIn(def)]);
    for (const n of engineNames(def.name)) {
      assert.ok(declared.has(n), `${def.name}: the engine reads \`${n}\`, which the schema does not declare`);
    }
  }
});

test('every declared property and alias is one the engine reads, with a description', () => {
  for (const def of TOOLS) {
    const read = engineNames(def.name);
    for (const [n, p] of Object.entries(def.parameters.properties)) {
      assert.ok(read.has(n), `${def.name}: \`${n}\` is declared but the engine never reads it`);
      assert.ok(p.type && p.description?.length > 10, `${def.name}.${n}: type and description`);
    }
    for (const n of aliasesIn(def)) assert.ok(read.has(n), `${def.name}: alias \`${n}\` is not read by the engine`);
    for (const r of def.parameters.required ?? []) assert.ok(def.parameters.properties[r], `${def.name}: required ${r}`);
  }
});

test('the bounds declared are the engine\'s', () => {
  const limits = src('src/wire/limits.rs');
  const num = (name) => Number(new RegExp(`pub const ${name}: usize = ([\\d_]+)`).exec(limits)[1].replaceAll('_', ''));
  const p = (tool, name) => byName[tool].parameters.properties[name];
  assert.equal(p('cloud_offload', 'task').maxLength, num('MAX_TASK_CHARS'));
  assert.equal(p('cloud_offload', 'files').maxItems, num('MAX_FILES'));
  assert.equal(p('cloud_offload', 'timeout_minutes').maximum, 24 * 60);
  assert.match(src('src/wire/limits.rs'), /pub const MAX_TIMEOUT_MINUTES: u64 = 24 \* 60;/);
  assert.match(src('src/tools/offload_args.rs'), /const MAX_MODEL_CHARS: usize = 200;/);
  assert.equal(p('cloud_offload', 'model').maxLength, 200);
  assert.match(src('src/agent/tools/mesh_await.rs'), /const MAX_SENDERS: usize = 50;/);
  assert.equal(p('mesh_await', 'senders').maxItems, 50);
  assert.match(src('src/agent/tools/mesh_await.rs'), /MAX_TIMEOUT_S: f64 = 600\.0;/);
  assert.equal(p('mesh_await', 'timeout_seconds').maximum, 600);
  assert.match(src('src/agent/tools/mesh_inbox.rs'), /MAX_TIMEOUT_S: f64 = 300\.0;/);
  assert.equal(p('mesh_inbox', 'timeout_seconds').maximum, 300);
  assert.match(src('src/agent/tools/mesh_inbox.rs'), /MAX_LIMIT: usize = 500;/);
  assert.equal(p('mesh_inbox', 'limit').maximum, 500);
  assert.match(src('src/agent/tools/mesh_inbox.rs'), /MAX_IDS: usize = 1000;/);
  assert.equal(p('mesh_inbox', 'ids').maxItems, 1000);
  assert.match(src('src/agent/tools/discover.rs'), /MAX_LIMIT: u64 = 200;/);
  assert.equal(p('discover', 'limit').maximum, 200);
  assert.match(src('src/offload/client.rs'), /w <= 600\.0/);
  assert.equal(p('offload_status', 'wait_seconds').maximum, 600);
  assert.match(src('src/agent/tools/mesh_send.rs'), /MAX_KEY_CHARS: usize = 128;/);
  assert.equal(p('mesh_send', 'idempotency_key').maxLength, 128);
});

test('the file limit users read is the one that fits in 80 chunks, everywhere it is stated', () => {
  const limits = src('src/wire/limits.rs');
  const chunk = 512 * 1024;
  assert.match(limits, /pub const CHUNK_CHARS: usize = 512 \* 1024;/);
  assert.match(limits, /pub const MAX_CHUNKS: usize = 80;/);
  assert.match(limits, /pub const FILE_ENVELOPE_CHARS: usize = 4096;/);
  const max = Math.floor((80 * chunk - 4096) / 4) * 3;
  assert.equal(max, 31_454_208);
  // base64 of the largest file plus the envelope fits in 80 chunks; of one byte more it does not fit the limit.
  assert.ok(Math.ceil(max / 3) * 4 + 4096 <= 80 * chunk);
  const shown = max.toLocaleString('en-US');
  assert.match(limits, new RegExp(`MAX_FILE_TEXT: &str = "${shown} bytes \\(30 MiB less 3 KiB\\)"`));
  const offload = byName.cloud_offload;
  assert.ok(offload.description.includes(`up to ${shown} bytes (30 MiB less 3 KiB) each`), offload.description);
  assert.ok(offload.parameters.properties.files.description.includes(`up to ${shown} bytes`));
  for (const f of ['README.md', 'skills/mesh-federation/SKILL.md', 'js-host/cli.js']) {
    // The README's table of changes quotes the original: it is not a promise.
    const t = src(f).replace(/### Tool texts versus the original[\s\S]*?\n## /, '');
    assert.ok(t.includes(shown), `${f} states the file limit`);
    assert.doesNotMatch(t, /30 ?MB each|30 MiB each(?! way)|max 30MB/, `${f} still promises 30 MB files`);
  }
});

test('corrected texts no longer promise what this engine does not do', () => {
  const all = TOOLS.flatMap((t) => [t.description, ...Object.values(t.parameters.properties).map((p) => p.description)]);
  for (const [bad, why] of [
    [/GPU/, 'the sandbox has no GPU/inference runtime here'],
    [/AGT governance/, 'no AGT policy runs in the sandbox'],
    [/CRD/, 'no Kubernetes resource is created or deleted'],
    [/30 ?MB/, 'a 30 MB file needs 81 chunks and cannot be sent'],
    [/deletes the cloud sandbox/, 'the controller stops a local sandbox process'],
    [/already consumed by an offload waiter/, 'no waiter consumes inbox messages'],
    [/flush matched entries and then call mesh_inbox/, 'entries marked read are hidden from a default mesh_inbox'],
  ]) {
    for (const t of all) assert.doesNotMatch(t, bad, why);
  }
  // The cancel answer says what happens.
  const client = src('src/offload/client.rs');
  assert.doesNotMatch(client, /Cluster CRD cleanup signal sent/);
  assert.match(client, /cancelled\. Cleanup signal sent to the controller; the sandbox will be torn down shortly\./);
  // AMIDs are promised only where the engine routes or matches them as DIDs.
  const amid = TOOLS.flatMap((t) => Object.entries(t.parameters.properties)
    .filter(([, p]) => /AMID/i.test(p.description)).map(([n]) => `${t.name}.${n}`));
  assert.deepEqual(amid.sort(), ['mesh_await.senders', 'mesh_inbox.from', 'mesh_send.to']);
  assert.match(src('src/agent/tools/mesh_send.rs'), /Address::Amid \{ amid, did \} => \{/);
  assert.match(src('src/agent/tools/mesh_inbox.rs'), /did_from_amid\(f\)/);
  assert.match(src('src/agent/tools/mesh_await.rs'), /Address::Amid \{ did, \.\. \} => Some\(did\)/);
});

test('the plugin takes the engine\'s failure shapes as failed calls, and nothing else: {error}, or {error, bad_input: true} for refused arguments (js-host/ENGINE.md)', () => {
  const r = (text, mesh) => ({ content: [{ type: 'text', text }], details: { mesh } });
  assert.equal(isToolFailure(r('❌ no such agent', { error: 'no such agent' })), true);
  assert.equal(isToolFailure(r('❌ mesh_send: `to` is not usable', { error: 'mesh_send: `to` is not usable', bad_input: true })), true);
  // An answer that reports a failure of something else (offload_status of an
  // offload that ended in error) carries more, and is an answer.
  assert.equal(isToolFailure(r('❌ Offload failed', { error: 'x', phase: 'error' })), false);
  assert.equal(isToolFailure(r('❌ x', { error: 'x', bad_input: 'true' })), false);
  assert.equal(isToolFailure(r('❌ x', { error: 'x', bad_input: false })), false);
  assert.equal(isToolFailure(r('x', { error: 'x' })), false, 'no ❌');
  assert.equal(isToolFailure(r('❌ x', {})), false, 'no error');
});
