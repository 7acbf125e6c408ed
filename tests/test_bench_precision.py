"""benchmarks/bench_precision.py on a tiny configuration: every backend in its process, finite numbers, exit 0."""
import math

import pytest

pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("torch")
pytest.importorskip("openvino")


def test_tiny_speed_table(load_benchmark, capsys, tmp_path):
    bench = load_benchmark("bench_precision")
    from drwkv.runtime.openvino import bf16_support

    backends = [b for b in bench.BACKENDS if b != bench.OPENVINO or bf16_support() is None]
    argv = ["--models", "DRWKV-T/2", "--tokens", "16", "--batch-sizes", "2", "--repeats", "1", "--threads", "1",
            "--work-dir", str(tmp_path), "--backends", *backends]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Precision benchmark: ")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0] == ["model", "tokens", "batch", "backend", "ms/call", "vs eager fp32", "vs compile bf16",
                       "max rel err vs fp32"]
    assert [row[3] for row in rows[1:]] == backends
    bounds = {bench.EAGER: 0, bench.ORT: 1e-5, bench.INT8: 0.1, bench.COMPILED: 0.05, bench.OPENVINO: 0.05}
    for model, tokens, batch, backend, ms, vs_eager, vs_compiled, err in rows[1:]:
        assert (model, tokens, batch) == ("DRWKV-T/2", "16", "2")
        assert math.isfinite(float(ms)) and float(ms) > 0
        assert math.isfinite(float(vs_eager.rstrip("x"))) and math.isfinite(float(vs_compiled.rstrip("x")))
        assert float(err) <= bounds[backend], backend


def test_tiny_products_table(load_benchmark, capsys):
    bench = load_benchmark("bench_precision")
    argv = ["--products", "--models", "DRWKV-T/2", "--tokens", "16", "--batch-sizes", "2", "--repeats", "1",
            "--threads", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Matrix products of one block, kernels timed alone: ")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0] == ["width", "M (tokens x batch)", "library", "ms per block", "GMAC/s", "vs torch fp32"]
    assert [row[2] for row in rows[1:]] == list(bench.PRODUCT_BACKENDS)
    for width, m, _, ms, gmacs, ratio in rows[1:]:
        assert (width, m) == ("128", "32")
        assert float(ms) > 0 and float(gmacs) > 0 and float(ratio.rstrip("x")) > 0
    assert rows[1][5] == "1.00x"
