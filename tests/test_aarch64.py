"""The native code on 64-bit ARM: scripts/build_aarch64.sh cross-builds the CPU kernels, the C++
runtime and their C++ tests for aarch64 and runs the tests under qemu-aarch64 (the kernels against
float64 references on an emulated `max` CPU and Cortex-A53, the runtime's fixed outputs bit for bit
against the x86-64 values). The script installs the cross compiler and qemu-user with apt-get when
they are missing.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["aarch64-linux-gnu-g++", "qemu-aarch64", "file"]
CTESTS = ["sidecar_json", "tiling", "bi_wkv_cpu", "fused_cpu", "runtime_bits",
          "bi_wkv_cpu_cortex_a53", "fused_cpu_cortex_a53", "runtime_bits_cortex_a53"]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake needed")
@pytest.mark.skipif(shutil.which("apt-get") is None and not all(map(shutil.which, TOOLS)),
                    reason="no apt-get to install g++-aarch64-linux-gnu, qemu-user and file, and they are missing")
def test_aarch64_build_passes_its_tests_under_qemu():
    result = subprocess.run(["bash", ROOT / "scripts" / "build_aarch64.sh"], capture_output=True, text=True,
                            timeout=1800)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "ARM aarch64" in out  # `file` of a test program
    assert "libdrwkv_samplers.a: no fused multiply-adds" in out
    for name in CTESTS:
        assert re.search(rf"Test +#\d+: {name} \.+ +Passed", out), f"ctest {name} did not pass:\n{out[-6000:]}"
    assert "100% tests passed out of 8" in out
