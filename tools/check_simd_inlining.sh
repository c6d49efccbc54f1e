#!/usr/bin/env bash
# tools/check_simd_inlining.sh: fail if a SIMD build of a CPU kernel calls
# out of line what should be compiled into it (issue 16).
#
#   tools/check_simd_inlining.sh              # builds target/release/psotune first
#   tools/check_simd_inlining.sh BINARY       # checks a binary already built
#
# Why: every kernel is compiled once per SIMD path inside a function with
# that path's target features (psotune::ops::cpu::simd::x86::avx2 / avx512).
# Code reached from there that is not inlined (a closure, a helper without
# #[inline(always)]) is compiled without the features; its intrinsics then
# become one call per vector operation. That made the AVX2 attention 30-50x
# slower than the AVX-512 one, and no test noticed: the results were right.
#
# It disassembles the release binary (objdump, from binutils) and fails on:
#   1. a psotune function calling an out-of-line core::core_arch intrinsic;
#   2. an out-of-line AVX2 / AVX-512 `Lanes` method (they are inline(always));
#   3. a SIMD build calling a psotune closure, `Lanes` method or `Kernel::run`
#      out of line (the kernel's body left its build);
#   4. fewer SIMD builds than expected, or AVX2 builds without ymm / AVX-512
#      builds without zmm instructions (the features did not apply).
# It prints, for information, the psotune functions the builds do call (the
# packing helpers of attention, which run once per task).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$(uname -m)" != "x86_64" ]; then
    echo "check_simd_inlining: x86-64 only (this is $(uname -m)); nothing to check"
    exit 0
fi
command -v objdump >/dev/null || { echo "check_simd_inlining: objdump not found (Debian package binutils)" >&2; exit 2; }

bin="${1:-}"
if [ -z "$bin" ]; then
    cargo build --release -p psotune-cli
    bin="${CARGO_TARGET_DIR:-target}/release/psotune"  # where cargo put it
fi
[ -f "$bin" ] || { echo "check_simd_inlining: no binary $bin" >&2; exit 2; }

# Kernels compiled through simd::Simd::run: attention forward/backward, GEGLU
# forward/backward, group norm forward/backward, layer norm forward/backward,
# bias add and its column sums, AdamW, im2col, col2im, transpose (each for
# f32 and, most of them, f64). Fewer builds than this means kernels stopped
# going through the dispatcher.
min_builds=20

dis="$(mktemp -t psotune-dis.XXXXXX)"
trap 'rm -f "$dis"' EXIT
objdump -d -C --no-show-raw-insn "$bin" > "$dis"

awk -v min="$min_builds" '
function build_kind(f) {
    if (f ~ /^psotune::ops::cpu::simd::x86::avx512(<|$)/) return "avx512"
    if (f ~ /^psotune::ops::cpu::simd::x86::avx2(<|$)/) return "avx2"
    return ""
}
/^[0-9a-f]+ <.*>:$/ {
    fn = $0; sub(/^[0-9a-f]+ </, "", fn); sub(/>:$/, "", fn)
    kind = build_kind(fn)
    if (kind != "") builds[kind]++
    if (fn ~ /^<psotune::ops::cpu::lanes::x86::Avx(2|512) as /) {
        print "FAIL: out-of-line lane method " fn; bad++
    }
    next
}
kind == "avx2" && /%ymm/ { ymm++ }
kind == "avx512" && /%zmm/ { zmm++ }
/\tcall/ {
    if ($0 !~ /</) next                      # register-indirect: libc through the GOT
    t = $0; sub(/.*call[^<]*</, "", t); sub(/>[^>]*$/, "", t)
    if (t ~ /_DYNAMIC|@plt|@GLIBC/) next
    if (fn ~ /psotune/ && t ~ /core::core_arch::/) {
        key = "FAIL: " fn " calls the intrinsic " t " out of line"
        if (!(key in seen)) { print key; seen[key] = 1; bad++ }
    }
    if (kind != "" && t ~ /^<?psotune::/) {
        if (t ~ /\{\{closure\}\}|Lanes<|Kernel>::run/) {
            key = "FAIL: the " kind " build calls " t " out of line"
            if (!(key in seen)) { print key; seen[key] = 1; bad++ }
        } else {
            info[kind " -> " t]++
        }
    }
}
END {
    for (k in info) print "info: " k " (" info[k] " call sites)"
    printf "SIMD builds: avx512 %d, avx2 %d; ymm instructions in avx2 builds: %d, zmm in avx512 builds: %d\n", builds["avx512"], builds["avx2"], ymm, zmm
    if (builds["avx2"] < min || builds["avx512"] < min) { print "FAIL: fewer than " min " SIMD builds of each kind"; bad++ }
    if (ymm == 0) { print "FAIL: the avx2 builds use no ymm register"; bad++ }
    if (zmm == 0) { print "FAIL: the avx512 builds use no zmm register"; bad++ }
    if (bad) { print "check_simd_inlining: " bad " problem(s)"; exit 1 }
    print "check_simd_inlining: ok"
}' "$dis"
