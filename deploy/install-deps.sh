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
# libopenblas0 matters: without it libtorch falls back to the reference BLAS
# and matrix products are 2-20x slower.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0
  libcaf-dev
  libfmt-dev libcereal-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev
  libasio-dev libssl-dev
  doctest-dev
  gnuplot-nox
  bible-kjv
  openssl
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

if [ ${#missing[@]} -eq 0 ]; then
  echo "deploy: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "deploy: installing ${missing[*]}"
if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
  echo "deploy: not root and no sudo: run this script as root to install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
