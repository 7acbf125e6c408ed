"""benchmarks/bench_bi_wkv.py on a tiny shape: one row with every column, finite numbers, exit status 0."""
import math
import re

import pytest

pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("torch")

COLUMNS = ["B, T, C", "kernel alone, y preallocated (ms)", "drwkv.ops.bi_wkv, no grad (ms)",
           "PyTorch training op, y + lse (ms)", "ORT node via onnxruntime-extensions (ms)",
           "ORT node, native path (ms)", "reference O(T^2) (ms)", "speed-up", "kernel GB/s", "copy GB/s",
           "% of copy", "worst rel. diff"]
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)", re.IGNORECASE)


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("bench_bi_wkv")


def test_tiny_shape_prints_every_column_without_nan(bench, capsys):
    assert bench.main(["--repeat", "1", "--threads", "1", "--tokens", "--shape", "2,16,8"]) == 0
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0] == COLUMNS
    assert len(rows) == 2, rows
    row = dict(zip(COLUMNS, rows[1]))
    assert len(rows[1]) == len(COLUMNS) and row["B, T, C"] == "2,16,8"
    for name, cell in row.items():
        if name == "B, T, C" or cell == bench.NATIVE_NA:
            continue
        values = [float(x) for x in NUMBER.findall(cell)]
        assert values and all(math.isfinite(x) for x in values), (name, cell)
    # Entry points beside the kernel carry their time over the kernel's; the native path may be n/a.
    for name in COLUMNS[2], COLUMNS[4], COLUMNS[5]:
        assert re.fullmatch(r"[\d.]+ \([\d.]+x\)", row[name]) or (
            name == COLUMNS[5] and row[name] == bench.NATIVE_NA), (name, row[name])
    assert float(row["worst rel. diff"]) <= 1e-5
