// Real Chromium for the browser tests (tests/browser.*.test.mjs) and the
// browser bench: Debian's `chromium` package (scripts/setup.sh installs it)
// driven by playwright-core, each profile in a fresh user-data-dir, with
// nothing that calls out to Google's hosts (this machine's network refuses
// them).
//
//   const b = chromiumOrSkip(t);             // in a test: skips (outside CI) when missing
//   const profile = await launchProfile();   // a persistent context on a fresh profile
//   const page = await profile.context.newPage();
//   await profile.close();
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { skipUnlessCi } from './prereq.mjs';

const SMALL_DISK = path.join(path.dirname(fileURLToPath(import.meta.url)), 'chromium-small-disk.sh');

export const CHROMIUM = process.env.KARS_CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Why the browser tests cannot run here, or null. Under CI (CI=true) a missing
 * Chromium is a failure, not a reason to skip: scripts/setup.sh installs it.
 */
export function browserMissing() {
  if (fs.existsSync(CHROMIUM)) return null;
  return skipUnlessCi(`${CHROMIUM} is missing (Debian's chromium package; scripts/setup.sh installs it)`) || null;
}

const live = new Set();
process.on('exit', () => {
  for (const dir of live) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Why Chromium cannot be given a small disk of its own here (a tmpfs in a
 * private mount namespace: root, unshare and mount), or null.
 */
export function smallDiskMissing() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-disk-probe-'));
  try {
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o size=1m kars-probe "$0"', dir], { encoding: 'utf8', timeout: 10_000 });
    if (r.error) return `unshare cannot run (${r.error.message}): a small disk for Chromium needs util-linux's unshare`;
    if (r.status !== 0) return `a tmpfs cannot be mounted in a private mount namespace here (needs root or CAP_SYS_ADMIN): ${(r.stderr || '').trim()}`;
    return null;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A Chromium with its own fresh profile directory (removed on close).
 * diskSize ('48m'): the profile lies on a tmpfs of that size in a private
 * mount namespace (chromium-small-disk.sh), so the browser's storage quota is
 * small and really runs out; the profile is gone when this Chromium exits.
 */
export async function launchProfile({ downloads = true, diskSize } = {}) {
  const { chromium } = await import('playwright-core');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kars-chromium-'));
  live.add(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: diskSize ? SMALL_DISK : CHROMIUM,
    ...(diskSize ? { env: { ...process.env, KARS_DISK_SIZE: diskSize, KARS_CHROMIUM: CHROMIUM } } : {}),
    headless: true,
    args: CHROMIUM_ARGS,
    acceptDownloads: downloads,
    viewport: { width: 360, height: 800 },
  });
  return {
    context,
    dir,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
      live.delete(dir);
    },
  };
}

/** Page errors and console errors of a page, for assertion messages. */
export function collectPageErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') errors.push(`console.${m.type()}: ${m.text()}`);
  });
  return errors;
}
