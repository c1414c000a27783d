#!/usr/bin/env bash
# Idempotent: creates .venv with the real AgentMesh relay/registry and the AGT
# Python encryption modules (agent-governance-toolkit-core[server]==5.0.0),
# pip cache in .cache/pip. Skips the install when the venv already has them.
# Used by the interop tests (tests/harness/servers.mjs, tests/peers/agt_peer.py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PKG=agent-governance-toolkit-core
VERSION=5.0.0
PY=.venv/bin/python

die() { echo "setup-venv.sh: ERROR: $*" >&2; exit 1; }
step() { echo "==> $*"; }

export PIP_CACHE_DIR="$ROOT/.cache/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

venv_ok() {
  [ -x "$PY" ] || return 1
  "$PY" -c "import agentmesh.relay, agentmesh.registry, agentmesh.encryption" >/dev/null 2>&1 || return 1
  [ "$("$PY" -c "import importlib.metadata as m; print(m.version('$PKG'))" 2>/dev/null)" = "$VERSION" ] || return 1
  # the [server] extra: uvicorn needs the websockets library for the relay's /ws
  "$PY" -c "import fastapi, uvicorn, websockets" >/dev/null 2>&1
}

if venv_ok; then
  step ".venv already has $PKG $VERSION: nothing to do"
else
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed (need >= 3.11)"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "python3 $(python3 -V 2>&1) is too old: need >= 3.11"
  if [ ! -x "$PY" ]; then
    step "python3 -m venv .venv"
    python3 -m venv .venv </dev/null || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  fi
  step "pip install '$PKG[server]==$VERSION' (cache: .cache/pip)"
  "$PY" -m pip install -q "$PKG[server]==$VERSION" </dev/null || die "pip install failed"
  venv_ok || die ".venv still lacks agentmesh.relay/registry/encryption or $PKG $VERSION after install"
fi
echo "    $("$PY" -V) $PKG $("$PY" -c "import importlib.metadata as m; print(m.version('$PKG'))")"
echo "setup-venv.sh: ok"
