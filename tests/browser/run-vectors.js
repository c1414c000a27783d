// Runs tests/vectors.component.test.mjs in this page (see vectors.html).
import './shim/buffer.js';
import { run } from 'node:test';

const out = document.getElementById('out');
globalThis.vectorResults = (async () => {
  await import('../vectors.component.test.mjs');
  const results = await run();
  out.textContent = results.map((r) => `${r.ok ? 'ok' : 'FAIL'}  ${r.name}${r.ok ? '' : `\n      ${r.error}`}`).join('\n');
  return results;
})().catch((e) => {
  out.textContent = `error: ${e?.stack ?? e}`;
  return [{ name: 'load', ok: false, error: String(e?.stack ?? e) }];
});
