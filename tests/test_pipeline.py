"""drwkv.Pipeline: the application API over a denoiser, the samplers, the noise and a decoder.
Pixel models through the hand-built toy ONNX denoiser of test_runtime.py; latent models are in
test_decoder.py (they need an export)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from test_runtime import BLOCK_TORCH, REPO, TOY_CONFIG, write_toy_onnx  # noqa: E402

import drwkv  # noqa: E402
from drwkv.png import to_uint8  # noqa: E402
from drwkv.runtime import load_denoiser  # noqa: E402
from drwkv.samplers import make_sampler, sample  # noqa: E402
from drwkv.schedule import Schedule  # noqa: E402


@pytest.fixture
def toy(tmp_path):
    return write_toy_onnx(tmp_path / "toy.onnx")


def test_images_are_the_samplers_and_do_not_depend_on_the_batch(toy):
    pipe = drwkv.Pipeline.load(toy)
    calls = []
    images = pipe(classes=["dog", 0], num_images=5, steps=3, seed=7, batch_size=2,
                  progress=lambda done, total: calls.append((done, total)))
    assert images.dtype == np.uint8 and images.shape == (5, 4, 4, 3)
    assert calls == [(i, 9) for i in range(1, 10)]                   # 3 batches x 3 steps, one call each
    assert list(pipe.last_run["labels"]) == [1, 0, 1, 0, 1] and pipe.last_run["tiles"] == 0
    sampler = make_sampler("ddim", Schedule.from_config(TOY_CONFIG), 3)
    expected = to_uint8(sample(load_denoiser(onnx=toy), sampler, np.array([1, 0, 1, 0, 1]), 7, 1.5))
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(pipe(classes=["dog", 0], num_images=5, steps=3, seed=7, batch_size=5), images)
    assert not np.array_equal(pipe(classes=["dog", 0], num_images=5, steps=3, seed=8), images)


def test_bad_arguments_are_value_errors(toy, tmp_path):
    pipe = drwkv.Pipeline.load(toy)
    for kwargs, message in (({"classes": ["giraffe"]}, "unknown class 'giraffe'"), ({"steps": 0}, "steps must be"),
                            ({"num_images": -1}, "num_images must be"), ({"steps": 1001}, "exceeds the model's")):
        with pytest.raises(ValueError, match=message):
            pipe(**kwargs)
    with pytest.raises(ValueError, match="not a model artifact"):
        drwkv.Pipeline.load(tmp_path / "model.bin")
    with pytest.raises(ValueError, match="pixel-space model: it takes no VAE decoder"):
        drwkv.Pipeline.load(toy, vae_tile=16)
    with pytest.raises(ValueError, match="pixel-space model: it takes no VAE decoder"):
        drwkv.Pipeline.load(toy, vae_decoder=tmp_path / "toy.vae_decoder.onnx")


def test_pipeline_never_imports_torch(toy):
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import drwkv
        images = drwkv.Pipeline.load({str(toy)!r})(num_images=2, steps=2, sampler="dpm++2m")
        assert images.shape == (2, 4, 4, 3) and "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
