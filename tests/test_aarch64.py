"""The native code on 64-bit ARM: scripts/build_aarch64.sh cross-builds the CPU kernels, the C++
runtime and their C++ tests for aarch64 and runs the tests under qemu-aarch64 (the kernels against
float64 references on an emulated `max` CPU and Cortex-A53, the runtime's fixed outputs bit for bit
against the x86-64 values). The script installs the cross compiler and qemu-user (and CMake) with
apt-get when they are missing.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["cmake", "aarch64-linux-gnu-g++", "qemu-aarch64", "file"]
# The interpreter's own bin folder first: CMake from scripts/setup.sh's virtual environment.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
CTESTS = ["sidecar_json", "tiling", "bi_wkv_cpu", "fused_cpu", "runtime_bits",
          "bi_wkv_cpu_cortex_a53", "fused_cpu_cortex_a53", "runtime_bits_cortex_a53"]


@pytest.mark.skipif(shutil.which("apt-get") is None and not all(shutil.which(t, path=PATH) for t in TOOLS),
                    reason="no apt-get to install cmake, g++-aarch64-linux-gnu, qemu-user and file, "
                           "and they are missing")
def test_aarch64_build_passes_its_tests_under_qemu():
    result = subprocess.run(["bash", ROOT / "scripts" / "build_aarch64.sh"], check=False, capture_output=True,
                            text=True, env={**os.environ, "PATH": PATH}, timeout=1800)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "ARM aarch64" in out  # `file` of a test program
    assert "libdrwkv_samplers.a: no fused multiply-adds" in out
    for name in CTESTS:
        assert re.search(rf"Test +#\d+: {name} \.+ +Passed", out), f"ctest {name} did not pass:\n{out[-6000:]}"
    assert "100% tests passed" in out
