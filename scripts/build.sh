#!/usr/bin/env bash
# Build the kars-mesh core for wasm32-unknown-unknown, wrap it as a WebAssembly
# component and transpile it to JS for the host (js-host/gen/).
#
#   bash scripts/build.sh            # or: npm run build
#
# Toolchain selection (see docs/design/TOOLCHAIN.md):
#   - rustup has the wasm32-unknown-unknown target -> plain `cargo build`
#   - otherwise Debian's rustc-web 1.96 (/usr/bin/rustc, /usr/bin/cargo) builds
#     std from source with -Zbuild-std into target/wasm-debian.
#   KARS_WASM_TOOLCHAIN=rustup|debian forces one path.
#
# Needs `npm ci` first (jco is a devDependency); scripts/setup.sh does both.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TARGET=wasm32-unknown-unknown
LIB=kars_mesh
GEN=js-host/gen
COMPONENT=$GEN/$LIB.component.wasm

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
step() { echo "==> $*"; }

[ -f Cargo.toml ] || die "no Cargo.toml in $ROOT"
[ -x node_modules/.bin/jco ] || die "jco not installed (node_modules/.bin/jco missing): run 'bash scripts/setup.sh' or 'npm ci'"

# Flags for the wasm target only (native builds are untouched):
#   -C target-feature=+simd128
#   -C link-arg=--max-memory=1 GiB: the core's linear memory may never reach
#     2 GiB. The JS glue of jco 1.11.2 reads the pointers the core returns as
#     SIGNED 32-bit numbers (DataView.getInt32, e.g. js-host/gen/
#     kars_mesh.component.js around line 441 for engine.handle's results), so
#     an address at or past 2^31 turns negative and `buffer.slice(ptr, ...)`
#     copies a different region (seen: decrypted plaintext handed to `store`
#     instead of the sealed record). js-host/core.js also refuses to go on
#     if the memory ever passes 2^31 - 1 bytes.
# RUSTFLAGS, when set, overrides every target-specific setting in cargo, so the
# flags go to both; both toolchain paths below build with them.
MAX_MEMORY=1073741824
WASM_FLAGS="-C target-feature=+simd128 -C link-arg=--max-memory=$MAX_MEMORY"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:+$CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS }$WASM_FLAGS"
if [ -n "${RUSTFLAGS:-}" ]; then export RUSTFLAGS="$RUSTFLAGS $WASM_FLAGS"; fi

toolchain=${KARS_WASM_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
  if command -v rustup >/dev/null 2>&1 \
     && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    toolchain=rustup
  else
    toolchain=debian
  fi
fi

case "$toolchain" in
  rustup)
    step "cargo build --release --target $TARGET --lib (rustup toolchain)"
    TARGET_DIR=${CARGO_TARGET_DIR:-target}
    cargo build --release --target "$TARGET" --lib \
      || die "cargo build for $TARGET failed (rustup toolchain)"
    ;;
  debian)
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] \
      || die "rustup has no $TARGET target and Debian's rustc-web/cargo-web are not installed: run 'bash scripts/setup.sh'"
    [ -d /usr/lib/rustlib/src/rust/library ] \
      || die "std sources missing (/usr/lib/rustlib/src/rust/library): install rust-web-src (scripts/setup.sh)"
    readlink -e /usr/bin/rust-lld >/dev/null \
      || die "/usr/bin/rust-lld is missing or dangling (it points at lld-22): install lld-22 (scripts/setup.sh)"
    TARGET_DIR=target/wasm-debian
    step "cargo build --release -Zbuild-std --target $TARGET --lib ($(/usr/bin/rustc --version))"
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$TARGET_DIR" \
      /usr/bin/cargo build --release -Zbuild-std=std,panic_abort --target "$TARGET" --lib \
      || die "cargo build for $TARGET failed (Debian rustc-web, -Zbuild-std)"
    ;;
  *) die "KARS_WASM_TOOLCHAIN must be 'rustup' or 'debian', not '$toolchain'" ;;
esac

CORE=$TARGET_DIR/$TARGET/release/$LIB.wasm
[ -f "$CORE" ] || die "expected core module at $CORE; is the crate's [lib] name '$LIB' with crate-type cdylib?"

# The component host supplies only kars:mesh/host. A WASI or wasm-bindgen import
# (e.g. getrandom's wasm_js backend) cannot be satisfied: refuse it here with a
# readable list rather than an opaque jco error.
step "checking core imports"
node --input-type=module -e '
  import { readFileSync } from "node:fs";
  const mod = new WebAssembly.Module(readFileSync(process.argv[1]));
  const bad = WebAssembly.Module.imports(mod).filter((i) => !i.module.startsWith("kars:mesh/host@") && !i.module.startsWith("[export]kars:mesh/"));
  if (bad.length) {
    console.error("core imports something other than kars:mesh/host:");
    for (const i of bad) console.error(`  ${i.module} :: ${i.name} (${i.kind})`);
    process.exit(1);
  }
' "$CORE" || die "$CORE has foreign imports (see above); no WASI/wasm-bindgen dependency may enter the wasm build"

# The linear memory's declared maximum (memory section or memory import):
# prints it in bytes, fails when there is none or it is above MAX_MEMORY.
check_max_memory() {
  node --input-type=module -e '
    import { readFileSync } from "node:fs";
    const [file, limit] = [process.argv[1], Number(process.argv[2])];
    const b = readFileSync(file);
    let o = 8;
    const u = () => { let r = 0, s = 0, x; do { x = b[o++]; r += (x & 0x7f) * 2 ** s; s += 7; } while (x & 0x80); return r; };
    const name = () => { const n = u(); o += n; };
    const limits = () => { const f = b[o++]; const min = u(); const max = f & 1 ? u() : undefined; return { min, max, mem64: !!(f & 4) }; };
    const mems = [];
    while (o < b.length) {
      const id = b[o++]; const size = u(); const end = o + size;
      if (id === 2) {
        for (let n = u(); n > 0; n--) {
          name(); name(); const kind = b[o++];
          if (kind === 0) u(); else if (kind === 1) { o++; limits(); } else if (kind === 2) mems.push(limits()); else if (kind === 3) o += 2; else if (kind === 4) { o++; u(); } else throw new Error(`import kind ${kind}`);
        }
      } else if (id === 5) {
        for (let n = u(); n > 0; n--) mems.push(limits());
      }
      o = end;
    }
    if (mems.length !== 1) { console.error(`${file}: ${mems.length} memories, expected 1`); process.exit(1); }
    const m = mems[0];
    if (m.max === undefined || m.mem64 || m.max * 65536 > limit) {
      console.error(`${file}: memory maximum is ${m.max === undefined ? "not declared" : m.max * 65536 + " bytes"}, must be at most ${limit}`);
      process.exit(1);
    }
    console.log(`  ${file}: memory min ${m.min * 65536} bytes, max ${m.max * 65536} bytes`);
  ' "$1" "$MAX_MEMORY"
}
step "checking the core's memory maximum (at most $MAX_MEMORY bytes)"
check_max_memory "$CORE" || die "$CORE does not declare a memory maximum of at most $MAX_MEMORY bytes (-C link-arg=--max-memory missing?)"

JCO=node_modules/.bin/jco
rm -rf "$GEN"
mkdir -p "$GEN"

step "jco new (no WASI adapter) -> $COMPONENT"
"$JCO" new "$CORE" -o "$COMPONENT" || die "jco new failed on $CORE"

step "jco transpile --instantiation async --no-wasi-shim -> $GEN/"
# --valid-lifting-optimization: values lifted out of our own core are trusted
# (wit-bindgen emits valid discriminants), so skip re-validating them in JS.
"$JCO" transpile "$COMPONENT" --instantiation async --no-wasi-shim \
  --valid-lifting-optimization --quiet -o "$GEN" \
  || die "jco transpile failed on $COMPONENT"
[ -f "$GEN/$LIB.component.js" ] || die "jco transpile produced no $GEN/$LIB.component.js"
check_max_memory "$GEN/$LIB.component.core.wasm" || die "the transpiled core module lost its memory maximum"

step "sizes"
size() { stat -c %s "$1"; }
printf '  %-48s %9s bytes (%s gzip)\n' "$CORE" "$(size "$CORE")" "$(gzip -9c "$CORE" | wc -c)"
for f in "$COMPONENT" "$GEN"/*.core*.wasm "$GEN/$LIB.component.js"; do
  printf '  %-48s %9s bytes (%s gzip)\n' "$f" "$(size "$f")" "$(gzip -9c "$f" | wc -c)"
done
echo "build.sh: ok ($toolchain toolchain)"
