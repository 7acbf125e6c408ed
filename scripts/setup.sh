#!/usr/bin/env bash
# Installs drwkv and everything its tests and examples use, on a fresh Debian machine with Python 3.
# Nothing is fetched at run time afterwards: datasets come from Debian, PyPI and npm packages.
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
"$PYTHON" -m pip install -q --no-build-isolation -e ".[onnx,data,bench,test,latent]"

# The emoji dataset: the npm package emoji-datasource-google (MIT; images Apache-2.0), extracted
# outside the repository where training.data looks for it ($DRWKV_DATA_DIR/emoji, default
# ~/.cache/drwkv/emoji). Skipped when it is already there.
EMOJI_DIR="${DRWKV_DATA_DIR:-$HOME/.cache/drwkv}/emoji"
if [ ! -f "$EMOJI_DIR/emoji.json" ] || [ ! -d "$EMOJI_DIR/img/google/64" ]; then
  if ! command -v npm > /dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm > /dev/null
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
