"""drwkv.ort_ops when onnxruntime-extensions changes the internals its fast dispatcher relies on: the BiWKV op
falls back to the library's stock dispatcher with one RuntimeWarning and gives the same output."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from test_runtime import REPO, write_toy_onnx  # noqa: E402

# Internals changed as a later release might change them; the dispatcher the library installed at import
# stays in place, as it would in that release.
CHANGES = {
    "none": "",
    "dispatcher renamed": "del _ocos._on_pyop_invocation",
    "dispatcher takes other arguments": textwrap.dedent("""
        stock = _ocos._on_pyop_invocation
        _ocos._on_pyop_invocation = lambda k_id, feed, attributes, context=None: stock(k_id, feed, attributes)
    """),
}


def _run(onnx_path, change, out_path):
    script = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        sys.modules["torch"] = None  # as drwkv.ort_ops imports the library
        from onnxruntime_extensions import _ocos
        del sys.modules["torch"]
    """) + CHANGES[change] + textwrap.dedent(f"""
        from drwkv.runtime import load_denoiser
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = load_denoiser(onnx={str(onnx_path)!r}, fuse=False)  # the one-session path, through the bridge
            rng = np.random.default_rng(0)
            out = d(rng.standard_normal((2, 3, 4, 4), dtype=np.float32), np.array([10, 900], np.float32),
                    np.array([0, 1]))
        np.save({str(out_path)!r}, out)
        for w in caught:
            print(w.category.__name__, w.message)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines(), np.load(out_path)


@pytest.mark.parametrize("change", [c for c in CHANGES if c != "none"])
def test_changed_internals_fall_back_to_the_stock_dispatcher_with_one_warning(change, tmp_path):
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    warnings_fast, fast = _run(onnx_path, "none", tmp_path / "fast.npy")
    assert warnings_fast == []
    warnings_stock, stock = _run(onnx_path, change, tmp_path / "stock.npy")
    assert len(warnings_stock) == 1, warnings_stock
    assert warnings_stock[0].startswith("RuntimeWarning onnxruntime-extensions ")
    assert "stock dispatcher" in warnings_stock[0]
    assert np.abs(fast).max() > 0.1
    np.testing.assert_array_equal(stock, fast)
