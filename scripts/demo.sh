#!/usr/bin/env bash
# The kars-mesh demo on a fresh clone: set up (toolchain, npm, the venv with
# the real relay and registry), build the component, then run
# scripts/demo.mjs: a local cluster, two agents made of the OpenClaw plugin's
# tool handlers, pairing, a message each way, an offload with its phases.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "${KARS_MESH_DEMO_SKIP_SETUP:-}" != 1 ]]; then
  echo "==> setup (skip with KARS_MESH_DEMO_SKIP_SETUP=1)"
  bash scripts/setup.sh
  echo "==> build the component"
  bash scripts/build.sh
fi
exec bash scripts/node.sh scripts/demo.mjs "$@"
