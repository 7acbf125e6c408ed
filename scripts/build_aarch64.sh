#!/usr/bin/env bash
# Cross-builds the native code for 64-bit ARM (aarch64) and runs its C++ tests under emulation: the
# CPU kernels (Bi-WKV, the fused passes), the C++ runtime (samplers, noise, tiling, PNG) and their
# ctest programs, built by g++-aarch64-linux-gnu with cmake/aarch64-linux-gnu.cmake (no CUDA, no
# Python module) and run by ctest under qemu-aarch64. Installs the cross compiler and qemu-user (and
# CMake, file) with apt-get when they are missing. Exits non-zero when a step or a test fails.
# Usage: bash scripts/build_aarch64.sh      (builds in build/aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/aarch64
step() { echo "build_aarch64: $*"; }

# CMake from PATH, else scripts/setup.sh's virtual environment, else Debian's.
if ! command -v cmake > /dev/null && [ -x .venv/bin/cmake ]; then
  PATH="$PWD/.venv/bin:$PATH"
fi
missing=()
command -v cmake > /dev/null || missing+=(cmake)
command -v aarch64-linux-gnu-g++ > /dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
command -v file > /dev/null || missing+=(file)
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get > /dev/null; then
    echo "build_aarch64: ${missing[*]} missing, and no apt-get to install them with" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  step "installing ${missing[*]} with apt-get (a minute or two)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

# Ninja where there is one; a build directory made by the other generator is started afresh.
GENERATOR="Unix Makefiles"
command -v ninja > /dev/null && GENERATOR=Ninja
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=$GENERATOR" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
step "configuring $BUILD ($(aarch64-linux-gnu-g++ -dumpfullversion), $GENERATOR)"
cmake -S . -B "$BUILD" -G "$GENERATOR" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DDRWKV_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=Release > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
grep "^-- drwkv:" "$BUILD.configure.log" || true
step "compiling the kernels, the runtime and the tests (a few minutes from scratch)"
cmake --build "$BUILD" -j "$(nproc)" > "$BUILD.build.log" 2>&1 || { cat "$BUILD.build.log"; exit 1; }

step "checking the binaries"
file -b "$BUILD/cpp/tests/test_bi_wkv_cpu"
# The runtime rounds every operation on its own (-ffp-contract=off), as on x86-64: aarch64 compilers
# would otherwise fuse multiply-adds, and the noise and samplers would differ in their last bits.
fused=$(aarch64-linux-gnu-objdump -d "$BUILD/cpp/runtime/libdrwkv_samplers.a" |
  grep -cE '\s(fn?madd|fn?msub|fml[as])\s' || true)
if [ "$fused" != 0 ]; then
  echo "build_aarch64: libdrwkv_samplers.a has $fused fused multiply-add instructions" >&2
  exit 1
fi
echo "libdrwkv_samplers.a: no fused multiply-adds"

step "running the C++ tests under qemu-aarch64"
ctest --test-dir "$BUILD/cpp/tests" -j 2 --output-on-failure
