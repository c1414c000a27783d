#!/bin/sh
# Chromium whose profile lies on a small disk of its own, so that it really
# runs out of storage (tests/browser.quota.test.mjs). Used as playwright's
# executablePath: it finds --user-data-dir, and in a private mount namespace
# (nothing leaks to the machine; the disk goes when Chromium exits) mounts a
# tmpfs of KARS_DISK_SIZE (e.g. 48m) on it, then execs Chromium with the same
# arguments. Playwright talks to Chromium over fds 3 and 4
# (--remote-debugging-pipe), which survive the exec. Needs root (or
# CAP_SYS_ADMIN); tests/harness/browser.mjs checks that before using it.
set -e
dir=
for a in "$@"; do
  case "$a" in --user-data-dir=*) dir="${a#--user-data-dir=}" ;; esac
done
[ -n "$dir" ] || { echo "chromium-small-disk.sh: no --user-data-dir among the arguments" >&2; exit 2; }
exec unshare --mount --propagation private sh -c '
  mount -t tmpfs -o "size=$1,mode=0700" kars-small-disk "$2"
  shift 2
  exec "$@"
' sh "${KARS_DISK_SIZE:?KARS_DISK_SIZE, e.g. 48m}" "$dir" "${KARS_CHROMIUM:-/usr/bin/chromium}" "$@"
