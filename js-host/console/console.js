// The agent console page. Every action is an engine tool call (the same
// calls, texts and `details` as OpenClaw's), made through browser-host.js;
// this file only renders them. Peer-controlled text is only ever set as
// textContent (never as HTML).

import { openNode, missingFeatures, checkProfile } from './browser-host.js';
import { storedFilesApart, removeStored } from './stored-files.js';
import { nameProblem } from '../agent-name.js';
import { PAGE_WORDS, inWords } from '../tool-words.js';

const $ = (id) => document.getElementById(id);
const metrics = { start: performance.timeOrigin, engineReadyMs: null, connectedMs: null };
/** For tests and the bench: the node, timings and what the page is doing. */
const api = { metrics, node: null, state: 'starting', offloadFollowing: false, ready: null };
globalThis.karsConsole = api;

const params = new URLSearchParams(location.search);
let profile = params.get('profile') || 'default';
const storageKey = (what) => `kars-mesh:${profile}:${what}`;

let node = null;
let config = null;

// ------------------------------------------------------------------ helpers
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// The engine's texts in this page's words (its sections and buttons, not tool calls).
const textOf = (result) =>
  inWords((Array.isArray(result?.content) ? result.content.filter((c) => c?.type === 'text').map((c) => c.text).join('\n') : '') || JSON.stringify(result), PAGE_WORDS);
const isError = (result) => String(result?.content?.[0]?.text ?? '').startsWith('❌') || result?.details?.mesh?.error != null;

function showResult(id, result) {
  const p = $(id);
  p.textContent = result instanceof Error ? `❌ ${result.message}` : textOf(result);
  p.dataset.kind = result instanceof Error || isError(result) ? 'error' : 'ok';
}

/**
 * mesh_await's answer: its text is the tool's JSON (what OpenClaw's model
 * reads), so the page first says in words who answered and who is still
 * missing, then shows that text.
 */
function showAwait(result) {
  const m = result?.details?.mesh;
  const p = $('await-result');
  if (!m?.status || isError(result)) {
    showResult('await-result', result);
    return;
  }
  const who = (name) => {
    const dids = m.answered_by?.[name] ?? [];
    return dids.length ? `${name} (${dids.map((d) => `${d.slice(0, 20)}…`).join(', ')})` : name;
  };
  const answered = (m.requested_senders ?? []).filter((s) => !(m.missing ?? []).includes(s));
  const lines = [];
  if (m.status === 'all_received') {
    lines.push(`✓ Every sender answered after ${m.waited_seconds} s: ${answered.map(who).join(', ')}. Their messages are in the inbox below.`);
  } else {
    lines.push(`⏱ Waited ${m.waited_seconds} s; still no message from: ${m.missing.join(', ')}.`);
    if (answered.length) lines.push(`Answered: ${answered.map(who).join(', ')} (in the inbox below).`);
    lines.push('Check the names (Discover finds them), or wait again.');
  }
  // The tool's own text follows, as OpenClaw's model reads it.
  p.textContent = `${lines.join('\n')}\n\n${textOf(result)}`;
  p.dataset.kind = m.status === 'all_received' ? 'ok' : 'error';
  p.dataset.status = m.status;
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status-text').textContent = text;
  api.state = state;
}

function notice(text, { kind = 'error', action, extra } = {}) {
  const n = $('notice');
  n.replaceChildren(el('p', { text }));
  if (extra) n.append(extra);
  if (action) n.append(el('button', { type: 'button', text: action.label, onclick: action.run }));
  n.dataset.kind = kind;
  n.hidden = false;
}

function clearNotice() {
  $('notice').hidden = true;
  $('notice').replaceChildren();
}

const fmtBytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const fmtTime = (ms) => new Date(ms).toLocaleTimeString();

/** Run a button's action with the button disabled meanwhile. */
async function busy(button, fn) {
  if (button) button.disabled = true;
  try {
    return await fn();
  } finally {
    if (button) button.disabled = false;
  }
}

async function call(tool, args, opts = {}) {
  if (!node) throw new Error('the engine is not running');
  return node.callTool(tool, args, { timeoutMs: 120_000, ...opts });
}

// ---------------------------------------------------------------- identity
async function refreshIdentity() {
  const r = await call('mesh_identity', {});
  const m = r.details?.mesh ?? {};
  $('id-did').textContent = m.did ?? '—';
  $('id-amid').textContent = m.amid ?? '—';
  $('id-registered').textContent = m.registered ? 'yes' : 'not yet';
  $('id-relay').textContent = m.connected ? 'connected' : m.relay_problem ?? 'connecting';
  $('inbox-count').textContent = m.unread ? `(${m.unread} unread)` : '';
  return m;
}

// ----------------------------------------------------------------- pending sends
// A message typed and sent is kept here until the engine has answered (it then
// holds it, sealed, and resends it itself); a tab closed in between sends it
// again on the next start with the same idempotency key, so it goes once.
const pendingSends = () => {
  try {
    return JSON.parse(localStorage.getItem(storageKey('pending-sends')) ?? '[]');
  } catch {
    return [];
  }
};
const savePendingSends = (list) => {
  if (list.length) localStorage.setItem(storageKey('pending-sends'), JSON.stringify(list));
  else localStorage.removeItem(storageKey('pending-sends'));
};

async function sendMessage(to, message, key = crypto.randomUUID()) {
  savePendingSends([...pendingSends().filter((p) => p.key !== key), { to, message, key }]);
  const r = await call('mesh_send', { to, message, idempotency_key: key });
  savePendingSends(pendingSends().filter((p) => p.key !== key));
  return r;
}

async function resendInterrupted() {
  const list = pendingSends();
  for (const p of list) {
    try {
      const r = await sendMessage(p.to, p.message, p.key);
      showResult('send-result', r);
      $('send-result').textContent = `A message whose tab was closed while it was being sent: ${textOf(r)}`;
    } catch (e) {
      showResult('send-result', e);
    }
  }
}

function parseMessage(text) {
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch {
    /* text */
  }
  return text;
}

// -------------------------------------------------------------------- inbox
let inboxShown = [];
let inboxTimer = null;
let identityTimer = null;

function scheduleIdentity() {
  clearTimeout(identityTimer);
  identityTimer = setTimeout(() => refreshIdentity().catch(() => {}), 60);
}

function scheduleInbox() {
  clearTimeout(inboxTimer);
  inboxTimer = setTimeout(() => refreshInbox().catch((e) => showResult('inbox-result', e)), 60);
}

function messageText(payload) {
  if (typeof payload === 'string') return payload;
  if (payload && typeof payload.content === 'string' && (payload.type === 'message' || payload.type === undefined)) return payload.content;
  return JSON.stringify(payload, null, 2);
}

async function refreshInbox() {
  const unreadOnly = $('inbox-unread-only').checked;
  const r = await call('mesh_inbox', { limit: 50, unread_only: unreadOnly });
  if (isError(r)) return showResult('inbox-result', r);
  const m = r.details?.mesh ?? {};
  inboxShown = m.messages ?? [];
  $('inbox-count').textContent = m.unread ? `(${m.unread} unread of ${m.total})` : m.total ? `(${m.total}, all read)` : '';
  $('inbox-result').textContent = inboxShown.length ? '' : unreadOnly ? 'No unread messages.' : 'The inbox is empty.';
  $('inbox-result').dataset.kind = '';
  const list = $('inbox-list');
  list.replaceChildren(
    ...inboxShown.map((msg) => {
      const li = el('li', { class: msg.read ? 'read' : 'unread', 'data-id': msg.id });
      li.append(
        el('div', { class: 'meta' },
          el('span', { text: msg.read ? 'read' : 'new' }), ' · ',
          el('span', { text: fmtTime(msg.received_at ?? msg.ts) }), ' · ',
          el('span', { text: msg.evidence === 'encrypted' ? 'end-to-end encrypted' : msg.evidence }), ' · from ',
          el('code', { text: msg.from })),
        el('div', { class: 'body', text: messageText(msg.payload) }),
      );
      const row = el('div', { class: 'row' });
      if (!msg.read) row.append(el('button', { type: 'button', class: 'secondary', text: 'Mark read', onclick: (ev) => markRead([msg.id], ev.currentTarget) }));
      row.append(el('button', { type: 'button', class: 'secondary', text: 'Reply', onclick: () => { $('send-to').value = msg.from; $('send-text').focus(); } }));
      li.append(row);
      return li;
    }),
  );
}

async function markRead(ids, button) {
  if (!ids.length) return;
  await busy(button, async () => {
    const r = await call('mesh_inbox', { ids, mark_read: true, unread_only: false, limit: ids.length });
    if (isError(r)) showResult('inbox-result', r);
    await refreshInbox();
  });
}

// ------------------------------------------------------------------ offload
let offloadCtl = null;

function renderOffload(m) {
  $('offload-view').hidden = false;
  $('offload-phase').textContent = m.phase ?? '—';
  $('offload-id').textContent = m.request_id ? `(${m.request_id.slice(0, 8)})` : '';
  const terminal = m.phase === 'done' || m.phase === 'error';
  $('offload-cancel').disabled = terminal || !m.request_id;
  // The last report of each transfer and of the run, as progress bars.
  const bars = new Map();
  for (const e of m.events ?? []) {
    const p = e.progress;
    if (!p) continue;
    bars.set(`${p.kind}:${p.name ?? ''}`, { p, text: e.text });
  }
  $('offload-progress').replaceChildren(
    ...[...bars.values()].map(({ p, text }) => {
      const id = `bar-${p.kind}-${(p.name ?? '').replace(/[^A-Za-z0-9_-]/g, '_')}`;
      const value = p.bytes_total ? p.bytes_done : p.chunks_total ? p.chunks_done : p.pct;
      const max = p.bytes_total || p.chunks_total || 100;
      const bar = el('progress', { id, max, 'aria-describedby': `${id}-l` });
      if (value != null) bar.value = value; // else: indeterminate
      return el('div', { class: 'progress' }, el('label', { for: id, id: `${id}-l`, text: text }), bar);
    }),
  );
  $('offload-events').replaceChildren(
    ...(m.events ?? []).map((e) => el('li', { text: `${fmtTime(e.at_ms)} ${e.phase}: ${inWords(e.text, PAGE_WORDS)}` })),
  );
  const summary = $('offload-summary');
  summary.replaceChildren();
  if (m.summary) summary.append(el('h3', { text: 'Summary' }), el('pre', { text: m.summary }));
  if (m.error) summary.append(el('p', { class: 'result', 'data-kind': 'error', text: m.error }));
  for (const n of m.not_returned ?? []) summary.append(el('p', { class: 'muted', text: `Not returned: ${n.name}${n.reason ? ` (${n.reason})` : ''}` }));
  $('offload-outputs').replaceChildren(...(m.outputs ?? []).map((o) => outputItem(o)));
}

function outputItem(o) {
  const status = el('span', { class: 'muted' });
  return el('li', {},
    el('div', {}, el('strong', { text: o.name }), ` ${fmtBytes(o.size)}`),
    el('div', { class: 'meta' }, 'SHA-256 ', el('code', { text: o.sha256 })),
    el('div', { class: 'row' },
      el('button', { type: 'button', class: 'secondary', text: `Download ${o.name}`, onclick: (ev) => download(o.path, o.name, o.sha256, status, ev.currentTarget) }),
      status));
}

/** Fetch a received file from the Worker, check its SHA-256, and hand it to the browser as a download. */
async function download(path, name, sha256, status, button) {
  await busy(button, async () => {
    try {
      const blob = await node.getFile(path);
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
      const hex = [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
      if (sha256 && hex !== sha256) {
        status.textContent = `SHA-256 mismatch: got ${hex}; not downloaded`;
        status.dataset.kind = 'error';
        return;
      }
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name.split('/').pop() });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      status.textContent = sha256 ? '✓ SHA-256 checked, downloaded' : 'downloaded';
    } catch (e) {
      status.textContent = `❌ ${e.message}`;
    }
  });
}

async function refreshFiles() {
  const files = await node.listFiles();
  $('files-list').replaceChildren(
    ...(files.length ? files : []).map((f) => {
      const status = el('span', { class: 'muted' });
      return el('li', {},
        el('div', {}, el('code', { text: f.path }), ` ${fmtBytes(f.size)}`),
        el('div', { class: 'row' },
          el('button', { type: 'button', class: 'secondary', text: 'Download', 'aria-label': `Download ${f.path}`, onclick: (ev) => download(f.path, f.path, null, status, ev.currentTarget) }),
          el('button', { type: 'button', class: 'secondary', text: 'Remove', 'aria-label': `Remove ${f.path} from this browser`, onclick: (ev) => busy(ev.currentTarget, async () => {
            try {
              await removeStored(profile, 'files', f.path);
              await refreshFiles();
            } catch (e) {
              status.textContent = `❌ cannot remove it: ${e.message}`;
            }
          }) }),
          status));
    }),
  );
  if (!files.length) $('files-list').append(el('li', { class: 'muted', text: 'None yet.' }));
}

// ------------------------------------------------------------- a full quota
const QUOTA_FIX =
  'remove received files (download what you still need first) or picked files below, or other data of this site (other profiles of this console) in the browser\'s settings';

/**
 * The engine stopped because the browser's storage for this origin is full:
 * say so, what was kept, and list what this console keeps here with Remove
 * buttons (the page removes them itself: the engine is stopped), then Reload.
 */
async function quotaNotice() {
  setStatus('stopped', 'Stopped: the browser\'s storage for this console is full');
  const usageAtStop = await storageUsage();
  let removedBytes = 0;
  const list = el('ul', { class: 'cards', 'aria-label': 'Files this console keeps in this browser' });
  const render = async () => {
    let files = [];
    try {
      // In a Worker of its own: see stored-files-worker.js.
      files = await storedFilesApart(profile);
    } catch (e) {
      list.replaceChildren(el('li', { text: `❌ cannot list them: ${e.message}` }));
      return;
    }
    list.replaceChildren(
      ...files.map((f) =>
        el('li', {},
          el('div', {}, el('code', { text: f.path }), ` ${fmtBytes(f.size)} · ${f.store === 'files' ? 'received' : 'picked for an offload'}`),
          el('button', { type: 'button', class: 'secondary', text: 'Remove', 'aria-label': `Remove ${f.path} (${fmtBytes(f.size)})`, onclick: (ev) => busy(ev.currentTarget, async () => {
            try {
              await removeStored(profile, f.store, f.path);
              removedBytes += f.size;
            } catch (e) {
              ev.target.after(el('span', { class: 'muted', text: ` ❌ ${e.message}` }));
              return;
            }
            await render();
          }) }))),
    );
    if (!files.length) list.append(el('li', { class: 'muted', text: 'This console keeps no received or picked files here now: free space in the browser\'s settings, then reload.' }));
  };
  await render();
  notice(
    'The browser\'s storage for this console is full (quota exceeded), so the engine stopped. Nothing of its last step was kept or sent; ' +
      'everything before it is safe, and what peers sent meanwhile comes again once it runs. To go on: ' + QUOTA_FIX + ', then reload.',
    {
      extra: list,
      action: {
        label: 'Reload',
        // At least half of what was removed must show as given back.
        run: (ev) => reloadWhenFreed(ev.currentTarget, usageAtStop != null && removedBytes > 0 ? usageAtStop - removedBytes / 2 : null),
      },
    },
  );
  api.quota = true; // the notice is up (what a test waits for)
}

/** The origin's storage use in bytes (navigator.storage.estimate), or null where the browser does not tell. */
async function storageUsage() {
  let timer;
  try {
    // An estimate that never comes must not hold the notice or the reload.
    const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('no estimate')), 2000); });
    const { usage } = await Promise.race([navigator.storage.estimate(), timeout]);
    return Number.isFinite(usage) ? usage : null;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

/** How long a reload waits for the browser to give back the space of removed files. */
const FREE_WAIT_MS = 120_000;

/**
 * Reload once the browser has given back the space of the removed files.
 * Chromium frees a deleted IndexedDB blob some time after the delete (about
 * 30 s here): an engine started before that stops again at its first
 * larger write (a peer's message coming back), which reads as if removing
 * files had not helped. So wait (at most FREE_WAIT_MS) until the storage's
 * use shows the removal, saying so on the button, then reload.
 */
async function reloadWhenFreed(button, expectUsage) {
  if (expectUsage != null) {
    if (button) button.disabled = true;
    const deadline = Date.now() + FREE_WAIT_MS;
    for (;;) {
      const usage = await storageUsage();
      if (usage == null || usage <= expectUsage || Date.now() >= deadline) break;
      if (button) button.textContent = `Waiting for the browser to give back the removed files' space (${fmtBytes(usage)} in use); reloading then`;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  location.reload();
}

/** Follow the active offload (each call waits for news: no polling) until it ends. */
async function followOffload(after = 0) {
  if (api.offloadFollowing) return;
  api.offloadFollowing = true;
  offloadCtl = new AbortController();
  try {
    for (;;) {
      const r = await call('offload_status', { wait_seconds: 30, after_events: after }, { signal: offloadCtl.signal, timeoutMs: 90_000 });
      const m = r.details?.mesh ?? {};
      // No offload at all ({active: false} without a request); a finished one has its request id.
      if (!m.request_id) {
        if (after === 0) $('offload-view').hidden = true;
        // No offload needs picked files: drop what an interrupted submission left.
        node.eraseInputs([]).catch(() => {});
        break;
      }
      renderOffload(m);
      after = m.events_total ?? after;
      if (m.phase === 'done' || m.phase === 'error') {
        api.offloadDone = m;
        // The inputs are not needed any more.
        node.eraseInputs([]).catch(() => {});
        await refreshFiles();
        break;
      }
    }
  } catch (e) {
    if (e?.name !== 'AbortError') showResult('offload-result', e);
  } finally {
    api.offloadFollowing = false;
  }
}

// --------------------------------------------------------------- the forms
function wire() {
  $('name-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('name-input').value.trim();
    // Refused here, where it was typed: the engine would refuse it at its
    // next start, and the page would have no identity to show.
    const why = name ? nameProblem(name) : undefined;
    if (why) return showResult('name-result', new Error(`That cannot be a display name (${why}). Nothing was changed.`));
    localStorage.setItem(storageKey('name'), name); // '': no name
    await node.stop();
    location.reload();
  });

  $('register-btn').addEventListener('click', (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        showResult('register-result', await call('mesh_register', {}));
        await refreshIdentity();
      } catch (e) {
        showResult('register-result', e);
      }
    }));

  $('pair-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('pair-token').value.trim();
    return busy(ev.submitter, async () => {
      $('pair-result').textContent = 'Pairing (the controller answers within 30 s)…';
      $('pair-result').dataset.kind = '';
      try {
        const r = await call('mesh_pair', { token }, { timeoutMs: 60_000 });
        showResult('pair-result', r);
        if (!isError(r)) $('pair-token').value = '';
      } catch (e) {
        showResult('pair-result', e);
      }
    });
  });

  $('discover-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const capability = $('discover-cap').value.trim();
    return busy(ev.submitter, async () => {
      try {
        const r = await call('discover', capability ? { capability } : {});
        showResult('discover-result', r);
        const agents = r.details?.mesh?.agents ?? [];
        $('discover-list').replaceChildren(
          ...agents.map((a) =>
            el('li', {},
              el('div', {}, el('strong', { text: a.name || '(no name)' })),
              el('div', { class: 'meta' }, el('code', { text: a.did })),
              a.capabilities?.length ? el('div', { class: 'meta', text: `capabilities: ${a.capabilities.join(', ')}` }) : null,
              el('button', { type: 'button', class: 'secondary', text: 'Send to this agent', onclick: () => { $('send-to').value = a.did; $('send-text').focus(); } }))),
        );
      } catch (e) {
        showResult('discover-result', e);
      }
    });
  });

  $('send-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const to = $('send-to').value.trim();
    const message = parseMessage($('send-text').value);
    return busy(ev.submitter, async () => {
      try {
        const r = await sendMessage(to, message);
        showResult('send-result', r);
        if (!isError(r)) $('send-text').value = '';
      } catch (e) {
        showResult('send-result', e);
      }
    });
  });

  $('inbox-refresh').addEventListener('click', (ev) => busy(ev.currentTarget, () => refreshInbox().catch((e) => showResult('inbox-result', e))));
  $('inbox-unread-only').addEventListener('change', () => scheduleInbox());
  $('inbox-mark-all').addEventListener('click', (ev) => markRead(inboxShown.filter((m) => !m.read).map((m) => m.id), ev.currentTarget));

  let awaitCtl = null;
  $('await-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const senders = $('await-senders').value.split(',').map((s) => s.trim()).filter(Boolean);
    const timeout = Number($('await-timeout').value);
    awaitCtl = new AbortController();
    $('await-cancel').disabled = false;
    $('await-result').textContent = `Waiting for ${senders.join(', ')} (at most ${timeout} s)…`;
    $('await-result').dataset.kind = '';
    delete $('await-result').dataset.status;
    return busy($('await-btn'), async () => {
      try {
        const r = await call('mesh_await', { senders, timeout_seconds: timeout }, { signal: awaitCtl.signal, timeoutMs: (timeout + 30) * 1000 });
        showAwait(r);
      } catch (e) {
        showResult('await-result', e.name === 'AbortError' ? new Error('Stopped waiting.') : e);
      } finally {
        $('await-cancel').disabled = true;
        scheduleInbox();
      }
    });
  });
  $('await-cancel').addEventListener('click', () => awaitCtl?.abort(new DOMException('stopped', 'AbortError')));

  $('offload-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const task = $('offload-task').value.trim();
    const picked = [...$('offload-files').files];
    const timeout = Number($('offload-timeout').value);
    return busy(ev.submitter, async () => {
      let files = [];
      try {
        // Kept in IndexedDB first: the engine reads them again after a reload.
        files = picked.length ? await node.addInputs(picked) : [];
      } catch (e) {
        const size = picked.reduce((n, f) => n + f.size, 0);
        showResult('offload-result', isQuota(e)
          ? new Error(`The picked files (${fmtBytes(size)}) do not fit in the browser's storage for this console (quota exceeded); nothing was kept or sent. Pick smaller files, or make room: ${QUOTA_FIX}.`)
          : e);
        return;
      }
      try {
        const r = await call('cloud_offload', { task, files, timeout_minutes: timeout });
        showResult('offload-result', r);
        // Refused (not paired, an offload already running, …): the files just picked are not needed.
        if (isError(r) && files.length) node.eraseInputs({ drop: files }).catch(() => {});
        if (!isError(r)) {
          $('offload-files').value = '';
          offloadCtl?.abort(new DOMException('a new offload', 'AbortError'));
          while (api.offloadFollowing) await new Promise((res) => setTimeout(res, 20));
          followOffload(0);
        }
      } catch (e) {
        showResult('offload-result', e);
      }
    });
  });
  $('offload-cancel').addEventListener('click', (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        showResult('offload-result', await call('offload_cancel', {}));
      } catch (e) {
        showResult('offload-result', e);
      }
    }));
}

// -------------------------------------------------------------------- start
function onLink({ open, reason }) {
  // The engine stopped: its link closing says nothing new (the notice says why).
  if (api.stopped) return;
  if (open) {
    metrics.connectedMs ??= performance.now();
    setStatus('connected', 'Connected to the relay');
  } else if (metrics.connectedMs == null) {
    // Never connected: nothing was lost, and the URL is what to check.
    setStatus('down', `Cannot reach the relay at ${config.relay_url}${reason ? ` (${reason})` : ''}; retrying. Messages you send meanwhile are queued and go out once it answers.`);
  } else {
    setStatus('down', `Relay connection lost${reason ? ` (${reason})` : ''}; reconnecting. Messages you send meanwhile are queued and go out when it is back.`);
  }
  refreshIdentity().catch(() => {});
  if (open) scheduleInbox();
}

const isQuota = (err) => err?.code === 'KARS_MESH_QUOTA';

function onFatal(err) {
  api.stopped = true;
  for (const b of document.querySelectorAll('main button, main input, main textarea')) b.disabled = true;
  if (isQuota(err)) {
    // The stopped engine's Worker goes too: Blobs it read (the files list,
    // an offload's inputs) would keep removed files' space taken until its
    // next garbage collection.
    node?.worker.terminate();
    return void quotaNotice();
  }
  setStatus('stopped', 'The engine stopped');
  notice(`The engine stopped: ${err.message}. Nothing it had confirmed is lost; reload the page to start it again.`, {
    action: { label: 'Reload', run: () => location.reload() },
  });
}

async function startEngine() {
  const name = localStorage.getItem(storageKey('name')) ?? config.name; // '': no name (askName)
  // The engine knows the registry by its own URL (pairing tokens name it);
  // the host reaches it through the console server's forward (no CORS there).
  const startConfig = { relay_url: config.relay_url, registry_url: config.registry_url, accept_sessions: 'all' };
  const routes = config.registry_via ? [[config.registry_url, config.registry_via]] : [];
  if (name) startConfig.name = name;
  if (config.relay_token) startConfig.relay_token = config.relay_token;
  const opened = await openNode({
    profile,
    config: startConfig,
    routes,
    onLink,
    onActivity: ({ frames }) => {
      if (frames) scheduleInbox();
      scheduleIdentity();
    },
    onFatal,
    onLog: (level, message) => {
      if (level === 'error' || level === 'warn') console.warn(`[kars-mesh ${level}] ${message}`);
    },
    onOtherTab: () =>
      notice('Another tab of this console tried to open this identity. It runs here only: that tab waits, and takes over when you close this one.', { kind: 'info' }),
  });
  if (opened.blocked) {
    setStatus('stopped', 'Open in another tab');
    api.state = 'blocked';
    notice(`This identity (profile "${profile}") is open in another tab of this browser, and one identity runs in one tab only. Use that tab, or close it: this tab starts the engine as soon as it is closed.`, { kind: 'info' });
    const got = await opened.whenFree;
    clearNotice();
    return got.node;
  }
  return opened.node;
}

/**
 * The key of the address `kars-mesh console` printed (#key=…), when its
 * relay has a token: taken from the address once, then kept for this
 * origin (other tabs, reloads) and removed from the address bar, which is
 * copied and shared more often than storage is.
 */
function pageKeyHeader() {
  const fromAddress = new URLSearchParams(location.hash.slice(1)).get('key');
  if (fromAddress) {
    try {
      localStorage.setItem('kars-mesh-console-key', fromAddress);
      history.replaceState(null, '', location.pathname + location.search);
    } catch {
      // Storage refused (full, or off): the key works for this load, and
      // stays in the address for the next.
    }
  }
  const key = fromAddress ?? localStorage.getItem('kars-mesh-console-key');
  return key ? { 'x-kars-console-key': key } : {};
}

/**
 * The setup form: a display name for this profile, checked as the engine
 * checks it, kept in localStorage (none is kept as '': no name). Resolves
 * once a usable name (or none) was given.
 */
function askName() {
  $('setup').hidden = false;
  $('setup-name').focus();
  return new Promise((resolve) => {
    const submit = (ev) => {
      ev.preventDefault();
      const name = $('setup-name').value.trim();
      const why = name ? nameProblem(name) : undefined;
      if (why) return showResult('setup-result', new Error(`That cannot be a display name (${why}).`));
      // None: kept as an empty name, so the server's suggestion (which may
      // be the name the engine just refused) is not taken instead.
      localStorage.setItem(storageKey('name'), name);
      $('setup').removeEventListener('submit', submit);
      $('setup').hidden = true;
      resolve();
    };
    $('setup').addEventListener('submit', submit);
  });
}

async function main() {
  const missing = missingFeatures();
  if (missing) {
    setStatus('stopped', 'This browser cannot run the console');
    notice(`This browser lacks what the console needs: ${missing.join('; ')}.`);
    return;
  }
  try {
    checkProfile(profile);
  } catch (e) {
    setStatus('stopped', 'Bad profile in the address');
    notice(`Bad profile in the address (?profile=…): ${e.message}`);
    return;
  }
  try {
    const r = await fetch('config.json', { cache: 'no-store', headers: pageKeyHeader() });
    if (r.status === 403) {
      setStatus('stopped', 'Open the address the console printed');
      const why = (await r.json().catch(() => ({}))).error;
      notice(`The console's relay needs a token, which the server gives only to the page opened at the address \`kars-mesh console\` printed${why ? ` (${why})` : ''}.`);
      return;
    }
    if (!r.ok) throw new Error(`config.json answered ${r.status}`);
    config = await r.json();
  } catch (e) {
    notice(`Cannot read the console's configuration (${e.message}). Is \`kars-mesh console\` still running?`, { action: { label: 'Reload', run: () => location.reload() } });
    return;
  }
  // A name given in the address (?name=…) is this profile's first name, if it can be one.
  const given = params.get('name')?.trim();
  if (given && localStorage.getItem(storageKey('name')) === null && !nameProblem(given)) localStorage.setItem(storageKey('name'), given);
  // A profile never started here: its name first.
  if (localStorage.getItem(storageKey('started')) === null && localStorage.getItem(storageKey('name')) === null && !config.name) {
    // Not a fault: a grey dot, and what to do.
    setStatus('setup', 'Not started yet: choose a display name below');
    $('setup-profile').textContent = profile;
    if (given) showResult('setup-result', new Error(`The name in the address cannot be a display name (${nameProblem(given)}).`));
    $('setup-name').value = given ?? '';
    await askName();
  }
  // Ask the browser not to evict this origin's storage (the identity lives there).
  navigator.storage?.persist?.().then((p) => (api.persisted = p)).catch(() => {});
  setStatus('connecting', 'Starting the engine…');
  try {
    node = await startEngine();
  } catch (e) {
    api.startError = e.message;
    if (isQuota(e)) return void (await quotaNotice());
    if (e?.code === 'KARS_MESH_NAME') {
      // The display name (this page's only setting the engine refuses): a
      // name stored before the page checked names, or one the engine alone
      // refuses. The identity is untouched; another name starts it.
      setStatus('setup', 'Not started: the display name cannot be used');
      $('setup-intro').textContent = `The engine did not start: ${e.message}. The identity of profile "${profile}" is kept; give another display name (or none) to start it.`;
      $('setup-name').value = localStorage.getItem(storageKey('name')) ?? config.name ?? '';
      $('setup-result').textContent = '';
      await askName();
      location.reload();
      return;
    }
    setStatus('stopped', 'The engine did not start');
    notice(`The engine did not start: ${e.message}`, { action: { label: 'Reload', run: () => location.reload() } });
    return;
  }
  api.node = node;
  metrics.engineReadyMs = performance.now();
  localStorage.setItem(storageKey('started'), '1');
  if (api.state !== 'connected') setStatus(node.linkOpen ? 'connected' : 'connecting', node.linkOpen ? 'Connected to the relay' : 'Connecting to the relay…');
  $('main').hidden = false;
  $('id-profile').textContent = profile;
  $('id-name').textContent = (localStorage.getItem(storageKey('name')) ?? config.name) || '(none)';
  $('name-input').value = localStorage.getItem(storageKey('name')) ?? config.name ?? '';
  wire();
  await refreshIdentity().catch(() => {});
  api.state = api.state === 'blocked' ? 'running' : api.state;
  await resendInterrupted();
  await refreshInbox().catch((e) => showResult('inbox-result', e));
  await refreshFiles().catch(() => {});
  // An offload that was running when the page was closed or reloaded goes on.
  followOffload(0);
  window.addEventListener('pagehide', () => node?.worker.terminate());
}

api.ready = main();
