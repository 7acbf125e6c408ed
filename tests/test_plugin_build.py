"""Builds the C++ side outside the Python package with CMake and runs its ctest programs.

Without TensorRT headers: the configure messages, and the ctest programs that need neither TensorRT
nor CUDA (the sidecar JSON reader, tiling, the CPU kernels against float64 references, the
runtime's fixed outputs bit for bit). With TensorRT headers (TensorRT_INCLUDE_DIR or TensorRT_ROOT
in the environment) and nvcc: also the BiWKV plugin library, its ctest harness (loads it as
TensorRT does, on the CPU), and the engine runtime and example app compile without warnings. No
GPU and no TensorRT libraries are needed.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRT_HINTS = {k: os.environ[k] for k in ("TensorRT_INCLUDE_DIR", "TensorRT_ROOT") if os.environ.get(k)}

# The C++ tests that need neither TensorRT nor CUDA: their programs and ctest names. The kernel tests
# check every instruction-set build this processor runs (baseline, and AVX2 where it has it).
CPU_TESTS = ["test_sidecar_json", "test_tiling", "test_bi_wkv_cpu", "test_fused_cpu", "test_runtime_bits"]
CPU_CTESTS = [name.removeprefix("test_") for name in CPU_TESTS]

# The interpreter's own bin folder first: CMake from scripts/setup.sh's virtual environment.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

needs_cmake = pytest.mark.skipif(shutil.which("cmake", path=PATH) is None or shutil.which("make", path=PATH) is None,
                                 reason="cmake and make needed")


def _run(cmd, env=None, **kwargs):
    env = {**(os.environ if env is None else env), "PATH": PATH}
    result = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, env=env, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _our_warnings(result, *paths):
    return [line for line in (result.stdout + result.stderr).splitlines()
            if "warning" in line.lower() and any(p in line for p in paths)]


@needs_cmake
def test_without_tensorrt_the_plugin_and_engine_runtime_are_skipped(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TensorRT_INCLUDE_DIR", "TensorRT_ROOT")}
    out = _run(["cmake", "-S", ROOT, "-B", tmp_path, "-G", "Unix Makefiles", "-DDRWKV_CUDA=OFF",
                f"-DTensorRT_INCLUDE_DIR={tmp_path / 'no-tensorrt'}"], env=env).stdout
    assert "drwkv: TensorRT not found, skipping the BiWKV plugin (set TensorRT_ROOT or TensorRT_INCLUDE_DIR)" in out
    assert "drwkv: TensorRT not found, building the C++ samplers without the engine runtime" in out
    built = _run(["cmake", "--build", tmp_path, "-j2", "--target", "drwkv_samplers", *CPU_TESTS])
    assert not _our_warnings(built, "cpp/runtime/", "cpp/tests/", "cpp/src/")
    tests = _run(["ctest", "--test-dir", tmp_path / "cpp" / "tests", "--output-on-failure"]).stdout
    assert all(f" {name} " in tests for name in CPU_CTESTS) and "100% tests passed" in tests


@needs_cmake
@pytest.mark.skipif(not TRT_HINTS, reason="TensorRT headers not given (set TensorRT_INCLUDE_DIR or TensorRT_ROOT)")
@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="nvcc not found: the plugin needs the CUDA kernels")
def test_plugin_and_engine_runtime_build_and_pass_ctest(tmp_path):
    build = tmp_path / "build"
    configure = ["cmake", "-S", ROOT, "-B", build, "-G", "Unix Makefiles", "-DDRWKV_CUDA=ON",
                 "-DCMAKE_CUDA_ARCHITECTURES=90-real",  # one architecture: this checks the build, not speed
                 *(f"-D{k}={v}" for k, v in TRT_HINTS.items())]
    out = _run(configure).stdout
    assert "drwkv: TensorRT" in out and "headers in" in out
    targets = ["drwkv_trt_plugin", "test_bi_wkv_plugin", "drwkv_runtime", *CPU_TESTS]
    built = _run(["cmake", "--build", build, "-j2", "--target", *targets])
    # The example app links libnvinfer, which a headers-only setup lacks: compile it without linking.
    example = _run(["make", "-C", build / "cpp" / "runtime", "examples/generate.cpp.o"])
    ours = _our_warnings(built, "plugins/", "cpp/runtime/", "cpp/tests/") + _our_warnings(example, "generate.cpp")
    assert not ours, "\n".join(ours)  # -Wall -Wextra clean

    plugin = build / "plugins" / "libdrwkv_trt_plugin.so"
    exported = set(_run(["nm", "-D", "--defined-only", plugin]).stdout.split())
    assert {"getCreators", "getPluginCreators", "setLoggerFinder"} <= exported
    assert "libnvinfer" not in _run(["readelf", "-d", plugin]).stdout  # loaded by TensorRT, never linked to it

    tests = _run(["ctest", "--test-dir", build / "cpp" / "tests", "--output-on-failure"]).stdout
    assert "bi_wkv_plugin" in tests and "100% tests passed" in tests
