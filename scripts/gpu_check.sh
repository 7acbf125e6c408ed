#!/usr/bin/env bash
# One short run on a machine with an NVIDIA GPU, nvcc and PyTorch with CUDA (nothing downloaded):
# builds drwkv._C with the CUDA kernels for this GPU, checks them against the CPU kernel and the
# float64 formula (fp32 and fp16, forward and backward, random and awkward shapes), then times the
# forward at B=8, T=4096, C=1024 next to the card's copy bandwidth, then runs the DRWKV-vs-DiT
# scaling benchmark on the GPU, then the TensorRT denoiser and VAE decoder engine tests.
#
#   bash scripts/gpu_check.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD=build/gpu-check

ARCH=$("$PYTHON" -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}{p[1]}")')
echo "== building drwkv._C for sm_${ARCH}"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDRWKV_PYTHON=ON -DDRWKV_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${ARCH}-real" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" > "$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" 2>&1 | tail -n 3
cp "$BUILD"/_C*.so drwkv/

echo "== checks and timings"
PYTHONPATH=. "$PYTHON" scripts/gpu_check.py "$@"

echo "== DRWKV against DiT as tokens grow (batch 1, depth 13, width 384)"
PYTHONPATH=. "$PYTHON" benchmarks/bench_scaling.py --device cuda --repeat 10 --plot "${PLOT_DIR:-build}/scaling_cuda.png"

# The TensorRT engines of a latent model (denoiser and VAE decoder, tiled) against ONNX Runtime;
# they need TensorRT's Python package, cuda-python and the built BiWKV plugin, and skip saying so.
echo "== TensorRT denoiser and VAE decoder engines"
PYTHONPATH=. "$PYTHON" -m pytest -q -rs tests/test_trt.py tests/test_decoder_trt.py
