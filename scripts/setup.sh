#!/usr/bin/env bash
# Installs drwkv and everything its tests and examples use, on a fresh Debian machine with Python 3.
# Nothing is fetched at run time afterwards: datasets come from Debian and PyPI packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if command -v apt-get > /dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null
fi
# torch is pinned: an unpinned install may pull a multi-GB CUDA build.
"$PYTHON" -m pip install -q torch==2.13.0
"$PYTHON" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
"$PYTHON" -m pip install -q --no-build-isolation -e ".[onnx,data,bench,test]"
