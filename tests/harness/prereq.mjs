// A test whose prerequisite (a tool, root, namespaces, Chromium) is missing
// here. On a developer machine it skips and says why; under CI (CI=true) it
// FAILS, because scripts/setup.sh installs every prerequisite there and a skip
// would be counted as a pass while the test never ran.
//
//   { skip: skipUnlessCi(why) }                 // module level: why or false; throws under CI
//   if (skipTestUnlessCi(t, why)) return;       // in a test: t.skip(why); throws under CI
//
// `why` is null/false/'' when nothing is missing, else a text naming what is
// missing and how to install it.

import { isolationSupport } from '../../js-host/jobs.js';

export const underCi = () => process.env.CI === 'true';

/** `why` as a skip reason (false when nothing is missing); under CI a missing prerequisite throws. */
export function skipUnlessCi(why) {
  if (!why) return false;
  if (underCi()) throw new Error(`prerequisite missing under CI (CI=true), where the test must run, not skip: ${why}`);
  return why;
}

/** In a test: true (after t.skip(why)) when a prerequisite is missing; under CI it throws, failing the test. */
export function skipTestUnlessCi(t, why) {
  const reason = skipUnlessCi(why);
  if (!reason) return false;
  t.skip(reason);
  return true;
}

/**
 * Why the --exec isolation (js-host/jobs.js: unshare with mount and pid
 * namespaces, then setpriv) cannot be set up here, or null. Its own reason
 * (isolationSupport().why) is kept: "no namespaces" alone does not say
 * whether a tool is missing or the kernel refuses.
 */
export function isolationMissing() {
  const iso = isolationSupport();
  if (iso.ok) return null;
  return `exec isolation is unavailable here: ${iso.why} (needs util-linux's unshare and setpriv, and mount namespaces: run as root, or enable unprivileged user namespaces)`;
}
