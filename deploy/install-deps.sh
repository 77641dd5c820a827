#!/usr/bin/env bash
# Installs every Debian package ceco needs to build, test and run on a fresh
# Debian 12 (bookworm) machine. Safe to run again: apt skips what is present.
#
#   bash deploy/install-deps.sh     (as root, or as a user with sudo)
#
# gnuplot-nox draws the plots of `ceco experiment`; bible-kjv is the corpus
# the built-in model was trained on (README "The built-in default model");
# openssl makes TLS certificates (deploy/make-tls-certs.sh); libasio-dev
# (standalone asio) and libssl-dev carry the edge-cloud wire protocol.
# libcpp-httplib-dev and prometheus-cpp-dev carry `ceco serve` (HTTP and
# metrics). Node.js and npm (Debian's, unless a node with its npm is already
# there) run the test that drives `ceco serve` with the official `openai`
# client, which the end of this script installs into test/openai/ (git-ignored).
# g++-aarch64-linux-gnu and qemu-user build the quantized kernels for aarch64
# and run their test under emulation (test/aarch64/run.sh, ctest
# quant_kernels_aarch64), so x86 CI checks the NEON kernels.
# libopenblas0 matters: without it libtorch falls back to the reference BLAS
# and matrix products are 2-20x slower.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0
  libcaf-dev
  libfmt-dev libcereal-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev
  libasio-dev libssl-dev
  libcpp-httplib-dev prometheus-cpp-dev
  doctest-dev
  gnuplot-nox
  bible-kjv
  openssl
  g++-aarch64-linux-gnu qemu-user
)

# Root runs apt-get directly (Debian has no sudo by default); a user goes
# through sudo, which is asked for only when something is missing.
sudo=
if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# A node that came with its own npm (another distribution's package) stays;
# else Debian's nodejs and npm.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  for p in nodejs npm; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "deploy: all ${#packages[@]} packages already installed"
else
  echo "deploy: installing ${missing[*]}"
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "deploy: not root and no sudo: run this script as root to install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The official OpenAI client for the serve test, at the version
# test/openai/package.json pins, into test/openai/node_modules.
client_dir="$(cd "$(dirname "$0")/.." && pwd)/test/openai"
if [ -f "$client_dir/node_modules/openai/package.json" ]; then
  echo "deploy: the openai npm client is installed in $client_dir"
else
  echo "deploy: npm install in $client_dir"
  (cd "$client_dir" && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
fi
