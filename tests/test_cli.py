"""drwkv-infer: PNG output and its metadata, determinism, the torch-free ONNX Runtime path, and
one-line errors for bad input. Uses the hand-built toy ONNX denoiser of test_runtime.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from PIL import Image  # noqa: E402
from test_runtime import BLOCK_TORCH, REPO, write_toy_onnx  # noqa: E402

from drwkv.cli import main, parse_classes  # noqa: E402


@pytest.fixture
def toy(tmp_path):
    return str(write_toy_onnx(tmp_path / "toy.onnx"))


def _cli(args, block_torch=False):
    """Run drwkv-infer in a fresh interpreter (optionally one where torch cannot be imported)."""
    prelude = BLOCK_TORCH if block_torch else "import sys\n"
    script = prelude + f"from drwkv.cli import main\nsys.exit(main({[str(a) for a in args]!r}))\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_same_seed_gives_identical_png_bytes(toy, tmp_path):
    args = ["--onnx", toy, "--steps", "4", "--num-images", "5", "--batch-size", "2", "--class", "dog,0"]
    for name, seed in (("a.png", 1), ("b.png", 1), ("c.png", 2)):
        assert main(args + ["--seed", str(seed), "--out", str(tmp_path / name)]) == 0
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c
    image = Image.open(tmp_path / "a.png")
    assert image.mode == "RGB" and image.size == (3 * 6 + 2, 2 * 6 + 2)   # 3x2 grid of 4px images, 2px padding
    text = image.text
    assert text["drwkv.sampler"] == "ddim" and text["drwkv.steps"] == "4" and text["drwkv.seed"] == "1"
    assert text["drwkv.cfg_scale"] == "1.5" and text["drwkv.backend"] == "onnxruntime"
    assert text["drwkv.classes"] == "dog,cat,dog,cat,dog" and text["drwkv.artifact"] == "toy.onnx"


def test_directory_output_writes_one_png_per_image(toy, tmp_path):
    out = tmp_path / "samples"
    assert main(["--onnx", toy, "--steps", "3", "--num-images", "3", "--sampler", "dpm++2m", "--cfg-scale", "1",
                 "--out", str(out)]) == 0
    files = sorted(os.listdir(out))
    assert files == ["0000_cat.png", "0001_dog.png", "0002_cat.png"]
    image = Image.open(out / files[1])
    assert image.size == (4, 4) and image.text["drwkv.class"] == "dog" and image.text["drwkv.index"] == "1"
    assert image.text["drwkv.sampler"] == "dpm++2m"


def test_onnx_runtime_path_runs_where_torch_cannot_be_imported(toy, tmp_path):
    result = _cli(["--onnx", toy, "--steps", "3", "--num-images", "2", "--sampler", "ddpm", "--threads", "1",
                   "--out", tmp_path / "x.png"], block_torch=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    assert "images/s" in result.stderr and "ms/step" in result.stderr


@pytest.mark.parametrize("case", ["missing", "truncated", "not drwkv", "unknown class", "zero steps",
                                  "negative steps", "two backends", "no backend", "eta with ddpm",
                                  "too many steps", "plugin without engine", "engine without tensorrt",
                                  "zero threads", "threads with engine"])
def test_bad_input_is_one_line_without_traceback(case, toy, tmp_path):
    base = ["--steps", "2", "--out", str(tmp_path / "o.png")]
    if case == "missing":
        args = ["--onnx", tmp_path / "missing.onnx"] + base
    elif case == "truncated":
        data = open(toy, "rb").read()
        (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
        args = ["--onnx", tmp_path / "cut.onnx"] + base
    elif case == "not drwkv":
        args = ["--onnx", write_toy_onnx(tmp_path / "plain.onnx", with_metadata=False)] + base
    elif case == "unknown class":
        args = ["--onnx", toy, "--class", "cat,giraffe"] + base
    elif case == "zero steps":
        args = ["--onnx", toy, "--steps", "0"]
    elif case == "negative steps":
        args = ["--onnx", toy, "--steps", "-3"]
    elif case == "two backends":
        args = ["--onnx", toy, "--ckpt", tmp_path / "c.pt"] + base
    elif case == "no backend":
        args = base
    elif case == "eta with ddpm":
        args = ["--onnx", toy, "--sampler", "ddpm", "--eta", "0.5"] + base
    elif case == "plugin without engine":
        args = ["--onnx", toy, "--plugin", tmp_path / "libplugin.so"] + base
    elif case == "zero threads":
        args = ["--onnx", toy, "--threads", "0"] + base
    elif case == "threads with engine":
        (tmp_path / "model.plan").write_bytes(b"not an engine")
        args = ["--engine", tmp_path / "model.plan", "--threads", "2"] + base
    elif case == "engine without tensorrt":  # no machine here has TensorRT: the engine path must say so
        (tmp_path / "model.plan").write_bytes(b"not an engine")
        args = ["--engine", tmp_path / "model.plan"] + base
    else:
        args = ["--onnx", toy, "--steps", "1001", "--out", str(tmp_path / "o.png")]
    result = _cli(args, block_torch=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drwkv-infer: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.png").exists()
    if case == "unknown class":
        assert "giraffe" in lines[0] and "cat, dog" in lines[0]


def test_parse_classes_by_name_index_and_list():
    config = {"num_classes": 3, "class_names": ["T-shirt", "Bag", "Ankle boot"]}
    assert parse_classes(None, config) == [0, 1, 2]
    assert parse_classes(["bag,2", "t-shirt"], config) == [1, 2, 0]
    assert parse_classes(["ankle boot"], config) == [2]
    with pytest.raises(ValueError, match="out of range"):
        parse_classes(["3"], config)
    with pytest.raises(ValueError, match="unknown class 'hat'"):
        parse_classes(["hat"], config)


def test_checkpoint_backend(tmp_path):
    torch = pytest.importorskip("torch")
    from drwkv.model import build_model

    config = {"model": "DRWKV-T/2", "image_size": 8, "in_channels": 3, "num_classes": 2, "learn_sigma": True,
              "class_names": ["cat", "dog"]}
    state = build_model(config).state_dict()
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": state, "ema": state},
               tmp_path / "ckpt.pt")
    assert main(["--ckpt", str(tmp_path / "ckpt.pt"), "--steps", "2", "--num-images", "2", "--class", "dog",
                 "--out", str(tmp_path / "g.png")]) == 0
    image = Image.open(tmp_path / "g.png")
    assert image.text["drwkv.backend"] == "torch" and image.text["drwkv.classes"] == "dog,dog"
    assert np.asarray(image).shape == (8 + 4, 2 * 8 + 6, 3)


def test_a_low_precision_run_records_its_precision_and_info_repeats_it(toy, tmp_path):
    from drwkv.png import read_text
    from drwkv.settings import regenerate_command

    assert main(["--onnx", toy, "--precision", "int8", "--steps", "2", "--num-images", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    command = regenerate_command(read_text(tmp_path / "g.png"))
    assert command[command.index("--precision") + 1] == "int8"
    assert main(["--onnx", toy, "--steps", "2", "--num-images", "2", "--out", str(tmp_path / "f.png")]) == 0
    assert "drwkv.precision" not in read_text(tmp_path / "f.png") and "--precision" not in regenerate_command(
        read_text(tmp_path / "f.png"))
