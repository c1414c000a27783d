// `node:fs` for the browser runs of Node test files: readFileSync of a URL
// under the test server (a synchronous XMLHttpRequest: test pages only).
export function readFileSync(url, encoding) {
  const xhr = new XMLHttpRequest();
  xhr.open('GET', String(url), false);
  xhr.overrideMimeType('text/plain; charset=x-user-defined');
  xhr.send();
  if (xhr.status !== 200) throw new Error(`readFileSync ${url}: HTTP ${xhr.status}`);
  const raw = xhr.responseText;
  const bytes = globalThis.Buffer.alloc(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i) & 0xff;
  return encoding ? bytes.toString(encoding) : bytes;
}
export default { readFileSync };
