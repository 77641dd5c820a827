#!/usr/bin/env bash
# Builds the quantized kernels and their test for aarch64 (the cross
# toolchain of cmake/aarch64-linux-gnu.cmake) and runs the test under
# qemu-aarch64: once as the default CPU `max` (NEON and SDOT: the dotprod
# level) and once as a Cortex-A53 (ARMv8.0, NEON without SDOT).
#
#   bash test/aarch64/run.sh [build folder]     (default: build/aarch64)
#
# Exits 77 (ctest: skipped) where aarch64-linux-gnu-g++ or qemu-aarch64 is
# missing; deploy/install-deps.sh installs both.
set -euo pipefail

source_dir="$(cd "$(dirname "$0")/../.." && pwd)"
build_dir="${1:-$source_dir/build/aarch64}"

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "aarch64 kernel test skipped: no $tool (g++-aarch64-linux-gnu and qemu-user; deploy/install-deps.sh)"
    exit 77
  fi
done

configure=(-S "$source_dir/test/aarch64" -B "$build_dir"
           -DCMAKE_TOOLCHAIN_FILE="$source_dir/cmake/aarch64-linux-gnu.cmake"
           -DCMAKE_BUILD_TYPE=Release)
if command -v ninja >/dev/null 2>&1; then
  configure+=(-G Ninja)
fi
if command -v ccache >/dev/null 2>&1; then
  configure+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake "${configure[@]}" >/dev/null
fi
cmake --build "$build_dir" -j2

for cpu in max cortex-a53; do
  echo "== qemu-aarch64 -cpu $cpu"
  qemu-aarch64 -cpu "$cpu" -L /usr/aarch64-linux-gnu "$build_dir/quant_kernels_test"
done
