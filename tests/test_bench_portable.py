"""benchmarks/bench_portable.py on a tiny configuration: every backend's row, finite numbers, exit 0."""
import math

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


def test_tiny_table(load_benchmark, capsys, tmp_path):
    bench = load_benchmark("bench_portable")
    argv = ["--model", "DRWKV-T/2", "--tokens", "16", "--in-channels", "1", "--repeats", "1", "--threads", "1",
            "--work-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0] == ["tokens", "batch", "backend", "ms/call", "vs ORT native", "peak RSS MiB",
                       "max rel err vs PyTorch"]
    backends = [row[2] for row in rows[1:]]
    assert backends[:3] == ["PyTorch eager", "ORT native", "ORT portable"]
    for tokens, batch, backend, ms, ratio, peak, err in rows[1:]:
        if ms.startswith("not run"):
            assert backend == "OpenVINO bf16"
            continue
        assert (tokens, batch) == ("16", "1")
        assert float(ms) > 0 and math.isfinite(float(ratio.rstrip("x"))) and float(peak) > 0
        assert float(err) <= (1e-1 if backend.endswith("bf16") else 1e-4)
