#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (CI runs it as root with
# CI=true and no stdin). Installs what `bash scripts/build.sh` and the JS tests
# need; safe to run again.
#
#   - wasm toolchain: if rustup already has the wasm32-unknown-unknown target,
#     nothing to do; otherwise Debian's rustc-web/cargo-web/rust-web-src/
#     rust-web-llvm (Rust 1.96 from bookworm-security) plus the lld package
#     that /usr/bin/rust-lld points at (lld-22; rust-web-llvm does not depend
#     on it, but the wasm linker is rust-lld).
#   - tinyproxy-bin, the forward proxy of tests/host.proxy.test.mjs and
#     tests/nemoclaw.sandbox.test.mjs; iproute2 (ip) for the latter's network
#     namespace.
#   - chromium, the real browser of tests/browser.*.test.mjs and the browser
#     bench (driven by the playwright-core devDependency, which downloads no
#     browser of its own).
#   - npm devDependencies (jco) via `npm ci`, cache in .cache/npm.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TARGET=wasm32-unknown-unknown
DEB_PKGS=(rustc-web cargo-web rust-web-src rust-web-llvm)

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
step() { echo "==> $*"; }

export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi

deb_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    step "apt-get update"
    "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
    apt_updated=1
  fi
  step "apt-get install -y $*"
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" \
    </dev/null || die "apt-get install $* failed"
}

# version_ge A B: is dotted version A >= B?
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# ---------------------------------------------------------------- wasm toolchain
if command -v rustup >/dev/null 2>&1 \
   && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  step "rustup has $TARGET: using it (no Debian Rust needed)"
else
  step "rustup has no $TARGET target: using Debian's rustc-web toolchain"
  missing=()
  for p in "${DEB_PKGS[@]}"; do deb_installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  else
    echo "    ${DEB_PKGS[*]}: already installed"
  fi

  # Minimum: the crate's rust-version, and never below what the build needs
  # (-Zbuild-std with wit-bindgen 0.61): the bookworm-security 1.96.
  need=1.96
  want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml 2>/dev/null | head -n1)
  if [ -n "$want" ] && ! version_ge "$need" "$want"; then need=$want; fi
  have=$(/usr/bin/rustc --version 2>/dev/null | awk '{print $2}')
  [ -n "$have" ] || die "/usr/bin/rustc does not run after installing ${DEB_PKGS[*]}"
  if ! version_ge "$have" "$need"; then
    step "/usr/bin/rustc is $have, need >= $need: upgrading from the security pocket"
    apt_install --only-upgrade "${DEB_PKGS[@]}"
    have=$(/usr/bin/rustc --version | awk '{print $2}')
    version_ge "$have" "$need" \
      || die "/usr/bin/rustc is $have after upgrade, need >= $need (is bookworm-security in the apt sources?)"
  fi
  echo "    $(/usr/bin/rustc --version)"

  # /usr/bin/rust-lld is a symlink to lld-NN, shipped by a package of that name.
  if ! readlink -e /usr/bin/rust-lld >/dev/null; then
    lld=$(readlink /usr/bin/rust-lld || true)
    lld=${lld##*/}
    [ -n "$lld" ] || die "/usr/bin/rust-lld is missing (rust-web-llvm should provide it)"
    apt_install "$lld"
    readlink -e /usr/bin/rust-lld >/dev/null \
      || die "/usr/bin/rust-lld still dangling after installing $lld"
  fi
  [ -d /usr/lib/rustlib/src/rust/library ] || die "rust-web-src did not provide /usr/lib/rustlib/src/rust/library"
fi

# ------------------------------------------------------------------ test tools
# tinyproxy: the real forward proxy that tests/host.proxy.test.mjs runs on
# loopback (Debian's tinyproxy-bin: the program alone, no system service).
if command -v tinyproxy >/dev/null 2>&1; then
  step "tinyproxy: already installed"
else
  apt_install tinyproxy-bin
fi
# ip (iproute2): the network namespace and veth pair of
# tests/nemoclaw.sandbox.test.mjs (unshare, setpriv and mount are util-linux
# and mount, always there on Debian).
if command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; then
  step "ip: already installed"
else
  apt_install iproute2
fi

# chromium: Debian's browser that tests/browser.*.test.mjs and bench/browser.mjs
# drive through playwright-core (/usr/bin/chromium; no browser download).
if [ -x /usr/bin/chromium ]; then
  step "chromium: already installed"
else
  apt_install chromium
fi

# ------------------------------------------------------------------------- npm
command -v node >/dev/null 2>&1 || die "node is not installed (need Node >= 20)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node $(node --version) is too old: need >= 20"

export npm_config_cache="$ROOT/.cache/npm"
if [ "$node_major" -lt 22 ]; then
  # npm's "EBADENGINE" warning below is about kars-mesh itself (it runs on
  # Node 22.13+, for node:sqlite); the build only needs this Node.
  step "Node $(node --version) builds the project; running it needs Node >= 22.13, which scripts/setup-openclaw.sh installs below as Node 24 (bin/kars-mesh and scripts/node.sh use it). npm's EBADENGINE warning about kars-mesh is expected"
fi
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
if [ -f package-lock.json ]; then
  step "npm ci (cache: .cache/npm)"
  npm ci --prefer-offline --no-progress </dev/null || die "npm ci failed"
else
  step "npm install (no package-lock.json; cache: .cache/npm)"
  npm install --no-progress </dev/null || die "npm install failed"
fi
[ -x node_modules/.bin/jco ] || die "node_modules/.bin/jco missing after npm install"
echo "    jco $(node_modules/.bin/jco --version)"

bash scripts/setup-venv.sh </dev/null || die "scripts/setup-venv.sh failed"
bash scripts/setup-openclaw.sh </dev/null || die "scripts/setup-openclaw.sh failed"
echo "setup.sh: ok"
