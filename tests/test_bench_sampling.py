"""benchmarks/bench_sampling.py on a tiny configuration: table 2 and the profile, finite numbers, exit 0."""
import math
import os
import re

import pytest

pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "pretrained", "fashion-mnist-drwkv-t4.pt")
BACKENDS = ["PyTorch eager", "ORT, native CPU path", "ORT, one session + BiWKV Python op", "ORT portable (standard ops)"]


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("bench_sampling")


def test_tiny_call_table_and_profile(bench, capsys, tmp_path):
    argv = ["--ckpt", CKPT, "--tokens", "16", "--batch-sizes", "1", "--repeats", "1", "--skip-sampling",
            "--profile", "--threads", "1", "--work-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in out.split("### Profile")[0].splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0] == ["tokens", "batch", "backend", "ms/call", "speed-up vs PyTorch eager", "max rel err vs PyTorch"]
    assert [row[2] for row in rows[1:]] == BACKENDS
    for tokens, batch, _, ms, speed_up, err in rows[1:]:
        assert (tokens, batch) == ("16", "1")
        assert math.isfinite(float(ms)) and float(ms) > 0
        assert math.isfinite(float(speed_up.rstrip("x")))
        assert float(err) <= 1e-5
    # Both paths' profiles, each with its element-wise share and BiWKV comparison.
    assert len(re.findall(r"element-wise share: [\d.]+% of the call", out)) == 2
    ratios = re.findall(r"BiWKV node vs kernel alone: .*: ([\d.]+)x", out)
    assert len(ratios) == 2 and all(math.isfinite(float(r)) for r in ratios)
