"""A quiet export: python -m export.to_onnx prints its summary and nothing of the exporter's known chatter,
while warnings that drwkv.known_warnings does not list still show."""
import subprocess
import sys
import textwrap

import pytest

from test_runtime import REPO


def test_only_the_listed_warnings_and_log_records_are_silenced():
    script = textwrap.dedent("""
        import logging, warnings
        from drwkv import known_warnings
        known_warnings.silence()
        known_warnings.silence()  # twice: still one filter
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("# The axis name: batch will not be used, since it shares the same shape constraints "
                      "with another axis: batch.", UserWarning)
        warnings.warn("a real problem", UserWarning)
        warnings.warn("# The axis name: batch is something else", UserWarning)
        log = logging.getLogger("torch.onnx._internal.exporter._registration")
        assert len(log.filters) == 1
        log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        log.warning("another record of the exporter")
    """)
    result = subprocess.run([sys.executable, "-W", "default", "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "a real problem" in err and "is something else" in err and "another record of the exporter" in err
    assert "LeafSpec" not in err and "shares the same shape constraints" not in err and "torchvision" not in err


def test_export_to_onnx_prints_its_summary_line_only(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from drwkv.model import build_model

    config = {"model": "DRWKV-T/4", "image_size": 8, "in_channels": 1, "num_classes": 2, "learn_sigma": True}
    state = build_model(config).state_dict()
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": state, "ema": state},
               tmp_path / "ckpt.pt")
    result = subprocess.run([sys.executable, "-m", "export.to_onnx", str(tmp_path / "ckpt.pt"), "-o",
                             str(tmp_path / "m.onnx")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'm.onnx'}: DRWKV-T/4 8px"), lines
