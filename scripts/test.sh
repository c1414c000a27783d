#!/usr/bin/env bash
# The one command that installs, builds and tests kars-mesh on a fresh clone:
#   bash scripts/test.sh
# 1. scripts/setup.sh   system packages (wasm toolchain), npm packages
# 2. scripts/build.sh   Rust core -> wasm component -> js-host/gen/
# 3. cargo fmt/clippy   style gates
# 4. cargo test         native unit, vector and property tests
# 5. node --test        the built component in Node: vectors and round trips
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "build the component"
bash scripts/build.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (native)"
cargo test --release

step "node --test (the built component; Node 22.13+ for node:sqlite)"
bash scripts/node.sh --test 'tests/*.test.mjs'

printf '\nAll checks passed.\n'
