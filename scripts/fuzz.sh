#!/usr/bin/env bash
# The longer fuzz run, on the same harness as the bounded pass that
# `cargo test --release` makes (tests/fuzz.rs, fuzz/harness/):
#   bash scripts/fuzz.sh [seconds] [target]
# seconds: in all, shared by the chosen targets (default 300)
# target:  run only targets whose name contains this (default: all), e.g. engine
# FUZZ_SEED=<n> repeats a run (the seed is printed at the start).
# Crashing inputs are saved under fuzz/crashes/<target>/ (not committed);
# replay one by copying it into fuzz/corpus/<target>/ and running
# `cargo test --release --test fuzz`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FUZZ_SECONDS="${1:-300}"
export FUZZ_TARGET="${2:-}"
exec cargo test --release --test fuzz -- --ignored on_demand --nocapture
