"""PNG settings: the one-line ``parameters`` chunk, reading text chunks back, ``drwkv-infer --info``, and
images made again from their stored settings (same bytes), with the toy ONNX denoiser of test_runtime.py."""
import os
import shlex

import numpy as np
import pytest
from PIL import Image

from drwkv.png import parameters_line, read_text, save_png

pytest.importorskip("onnxruntime_extensions")

from test_cli import _cli  # noqa: E402
from test_runtime import write_toy_onnx  # noqa: E402

from drwkv.cli import main  # noqa: E402


@pytest.fixture
def toy_dir(tmp_path, monkeypatch):
    """A folder holding toy.onnx, as the working directory (the --info command names the artifact by file name)."""
    write_toy_onnx(tmp_path / "toy.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _info(path, capsys):
    """drwkv-infer --info: (parameters line, regenerate command as arguments without the program name)."""
    assert main(["--info", str(path)]) == 0
    parameters, command = capsys.readouterr().out.strip().splitlines()
    command = shlex.split(command)
    assert command[0] == "drwkv-infer"
    return parameters, command[1:]


def test_parameters_line_quotes_values_with_separators():
    line = parameters_line([("Steps", 20), ("Sampler", "dpm++2m"), ("CFG scale", 1.5), ("Class", "dog,cat"),
                            ("Model", 'a "b": c')])
    assert line == 'Steps: 20, Sampler: dpm++2m, CFG scale: 1.5, Class: "dog,cat", Model: "a \\"b\\": c"'


def test_read_text_returns_the_chunks_and_rejects_what_is_not_a_png(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((2, 3, 3), np.uint8), {"parameters": "Steps: 1", "drwkv.seed": 5})
    assert read_text(tmp_path / "a.png") == {"parameters": "Steps: 1", "drwkv.seed": "5"}
    Image.new("RGB", (2, 2)).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"not an image")
    cut = (tmp_path / "a.png").read_bytes()
    (tmp_path / "d.png").write_bytes(cut[:40])
    for name, message in (("missing.png", "no such file"), ("b.jpg", "JPEG image, not a PNG"),
                          ("c.png", "not a readable PNG"), ("d.png", "not a readable PNG")):
        with pytest.raises(ValueError, match=message):
            read_text(tmp_path / name)


def test_grid_parameters_chunk_and_info(toy_dir, capsys):
    assert main(["--onnx", "toy.onnx", "--steps", "3", "--num-images", "3", "--class", "dog,cat", "--seed", "9",
                 "--sampler", "ddim", "--eta", "0.5", "--out", "g.png"]) == 0
    text = Image.open("g.png").text
    assert text["parameters"] == ('Steps: 3, Sampler: ddim, Eta: 0.5, CFG scale: 1.5, Seed: 9, Size: 4x4, '
                                  'Model: toy, Backend: onnxruntime, Artifact: toy.onnx, Class: "dog,cat,dog", '
                                  'Clip x0: True, Images: 3, First image: 0')
    assert text["drwkv.labels"] == "1,0,1" and text["drwkv.nrow"] == "2" and text["drwkv.num_images"] == "3"
    capsys.readouterr()
    parameters, command = _info("g.png", capsys)
    assert parameters == text["parameters"]
    assert command == ["--onnx", "toy.onnx", "--sampler", "ddim", "--steps", "3", "--eta", "0.5", "--cfg-scale", "1.5",
                       "--seed", "9", "--batch-size", "16", "--class", "1,0,1", "--num-images", "3",
                       "--first-image", "0", "--nrow", "2", "--out", "regenerated.png"]


@pytest.mark.parametrize("extra", [[], ["--first-image", "3", "--class", "cat,dog,dog", "--no-clip", "--nrow", "1"],
                                   ["--sampler", "ddpm", "--cfg-scale", "1", "--batch-size", "2"]],
                         ids=["defaults", "first-image-3", "ddpm"])
def test_a_grid_made_again_from_its_settings_has_the_same_bytes(toy_dir, capsys, extra):
    assert main(["--onnx", "toy.onnx", "--steps", "4", "--num-images", "5", "--seed", "21", "--out", "a.png"]
                + extra) == 0
    capsys.readouterr()
    _, command = _info("a.png", capsys)
    assert main(command) == 0
    assert (toy_dir / "regenerated.png").read_bytes() == (toy_dir / "a.png").read_bytes()


def test_one_image_of_a_directory_run_made_again_alone_has_the_same_bytes(toy_dir, capsys):
    """Image 3 of a 5-image run in batches of 2, made again on its own (a batch of 1): the noise depends
    on the image's number only, so the file is the same, settings included."""
    assert main(["--onnx", "toy.onnx", "--steps", "4", "--num-images", "5", "--batch-size", "2", "--sampler", "ddpm",
                 "--seed", "4", "--out", "run"]) == 0
    files = sorted(os.listdir("run"))
    assert files == ["0000_cat.png", "0001_dog.png", "0002_cat.png", "0003_dog.png", "0004_cat.png"]
    text = Image.open("run/0003_dog.png").text
    assert text["parameters"].endswith("Class: dog, Clip x0: True, Image: 3") and text["drwkv.label"] == "1"
    capsys.readouterr()
    _, command = _info("run/0003_dog.png", capsys)
    assert command[-8:] == ["--class", "1", "--num-images", "1", "--first-image", "3", "--out", "regenerated"]
    assert main(command) == 0
    assert os.listdir("regenerated") == ["0003_dog.png"]
    assert (toy_dir / "regenerated/0003_dog.png").read_bytes() == (toy_dir / "run/0003_dog.png").read_bytes()
    # and a different image number is a different image
    assert main(command[:-4] + ["--first-image", "1", "--out", "other"]) == 0
    assert np.any(np.asarray(Image.open("other/0001_dog.png")) != np.asarray(Image.open("run/0003_dog.png")))


@pytest.mark.parametrize("case", ["missing", "not a png", "not drwkv", "with a model"])
def test_info_on_bad_input_is_one_line(case, tmp_path):
    path = tmp_path / "x.png"
    args = ["--info", path]
    if case == "not a png":
        path.write_text("hello")
    elif case == "not drwkv":
        save_png(path, np.zeros((2, 2, 3), np.uint8), {"Software": "something else"})
    elif case == "with a model":
        save_png(path, np.zeros((2, 2, 3), np.uint8))
        args += ["--onnx", tmp_path / "m.onnx"]
    result = _cli(args, block_torch=True)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drwkv-infer: error: ") and "Traceback" not in result.stderr
