// Driving the agent console (js-host/console/) in a real Chromium page, as a
// person would: through its forms and buttons; what the page shows is read
// back from the DOM. `karsConsole` (the page's own test hook) gives timings
// and the engine's state for waiting.

/** Open the console in a new page of `context` and wait until the engine is connected and registered. */
export async function openConsole(context, url, { timeoutMs = 30_000 } = {}) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') errors.push(`console.${m.type()}: ${m.text()}`);
  });
  page.errors = errors;
  await page.goto(url);
  await untilReady(page, timeoutMs);
  return page;
}

/** The engine runs, the relay link is open and the identity is registered. */
export async function untilReady(page, timeoutMs = 30_000) {
  try {
    await page.waitForFunction(
      () => globalThis.karsConsole?.node && globalThis.karsConsole.metrics.connectedMs != null && document.getElementById('id-registered').textContent === 'yes',
      null,
      { timeout: timeoutMs, polling: 100 },
    );
  } catch (e) {
    const notice = await page.locator('#notice').textContent().catch(() => '');
    const status = await page.locator('#status').textContent().catch(() => '');
    throw new Error(`the console did not get ready: status ${JSON.stringify(status)}, notice ${JSON.stringify(notice)}; ${page.errors?.join('; ')} (${e.message})`);
  }
}

export const didOf = (page) => page.locator('#id-did').textContent();

/** Fill and submit a form; wait until `resultSelector` shows a text that is not a "…ing" placeholder. */
export async function submitAndRead(page, formSelector, fields, resultSelector, { timeoutMs = 60_000 } = {}) {
  for (const [sel, value] of Object.entries(fields)) await page.fill(sel, value);
  const before = await page.locator(resultSelector).textContent();
  await page.locator(`${formSelector} button[type=submit]`).first().click();
  await page.waitForFunction(
    ([sel, old]) => {
      const t = document.querySelector(sel).textContent;
      return t && t !== old && !t.endsWith('…');
    },
    [resultSelector, before],
    { timeout: timeoutMs },
  );
  return page.locator(resultSelector).textContent();
}

/** Send a message from the console's form. */
export async function sendFromConsole(page, to, text) {
  await page.fill('#send-to', to);
  await page.fill('#send-text', text);
  await page.locator('#send-result').evaluate((e) => (e.textContent = ''));
  await page.click('#send-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('send-result').textContent !== '', null, { timeout: 60_000 });
  return page.locator('#send-result').textContent();
}

/** Wait until the live inbox shows an entry containing `text`; returns that entry's text. */
export async function untilInboxShows(page, text, timeoutMs = 30_000) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#inbox-list li')].some((li) => li.textContent.includes(t)),
    text,
    { timeout: timeoutMs, polling: 100 },
  );
  return page.locator('#inbox-list li', { hasText: text }).first().textContent();
}

/** Every message a Node agent has (read or not) whose content includes `text`. */
export async function nodeHas(node, text) {
  const r = await node.callTool('mesh_inbox', { unread_only: false, limit: 200 });
  return (r.details.mesh.messages ?? []).filter((m) => JSON.stringify(m.payload).includes(text));
}

/** Those messages once there are any, or an error after `ms`. */
export async function untilNodeHas(node, text, ms = 30_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const got = await nodeHas(node, text);
    if (got.length) return got;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the peer never received ${JSON.stringify(text)}`);
}
