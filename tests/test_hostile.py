"""Hostile artifacts and runaway runs: what a downloaded model, a tampered PNG or a careless command
line can make drwkv do. Every case is one line on stderr (or one exception), a non-zero exit, nothing
read outside the artifact's folder, nothing written or lost."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from test_runtime import REPO, TOY_CONFIG, TOY_U, TOY_W, toy_denoiser, write_toy_onnx  # noqa: E402

import drwkv  # noqa: E402
from drwkv.cli import main  # noqa: E402
from drwkv.files import atomic_write, file_in_folder, UnsafePathError  # noqa: E402
from drwkv.png import save_png  # noqa: E402
from drwkv.runtime import ArtifactError, Denoiser, load_denoiser, max_threads  # noqa: E402
from drwkv.samplers import NonFiniteError, make_sampler, sample  # noqa: E402
from drwkv.schedule import Schedule  # noqa: E402


def run_cli(args, audit=None):
    """drwkv-infer in a fresh interpreter -> CompletedProcess. audit: a path fragment; the child
    prints every file it opens whose path holds it (Python's audit hook sees every open)."""
    hook = ""
    if audit:
        hook = (f"def _hook(event, args):\n"
                f"    if event == 'open' and {audit!r} in str(args[0]):\n"
                f"        print('OPENED', args[0], file=sys.stderr)\n"
                f"sys.addaudithook(_hook)\n")
    script = f"import sys\n{hook}from drwkv.cli import main\nsys.exit(main({[str(a) for a in args]!r}))\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def one_error_line(result, code=None):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and (code is None or result.returncode == code), result.stderr
    assert len(lines) == 1 and lines[0].startswith("drwkv-infer: error: "), result.stderr
    return lines[0]


def retag(path, config=None, **meta):
    """Rewrite an ONNX file's drwkv metadata: the config (a dict) and any other key=value."""
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    if config is not None:
        props["drwkv.config"] = json.dumps(config)
    props.update({k.replace("__", "."): v for k, v in meta.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


LATENT = {"vae": "vae", "vae_sha256": "0" * 64, "scaling_factor": 0.5, "shift_factor": 0.0, "channels": 3,
          "in_channels": 3, "downsample": 4, "image_size": 16}


@pytest.fixture
def toy(tmp_path):
    return str(write_toy_onnx(tmp_path / "toy.onnx"))


# 1. Paths an artifact names stay inside its folder ------------------------------------------------

@pytest.mark.parametrize("named", ["/etc/shadow", "../outside/evil_decoder.onnx", "sub/../../evil.onnx"])
def test_decoder_named_outside_the_folder_is_refused_unopened(tmp_path, named):
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "outside").mkdir()
    write_toy_onnx(tmp_path / "outside" / "evil_decoder.onnx")  # a runnable file where the path leads
    path = retag(write_toy_onnx(models / "m.onnx"), {**TOY_CONFIG, "latent": LATENT}, drwkv__vae_decoder=named)
    result = run_cli(["--onnx", path, "--steps", "2", "--num-images", "1", "--out", tmp_path / "g.png"],
                     audit=os.path.basename(named))
    line = one_error_line(result, 1)
    assert "outside" in line or "only name files inside its own folder" in line
    assert "OPENED" not in result.stderr and not (tmp_path / "g.png").exists()


def test_decoder_through_a_symbolic_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    os.symlink(write_toy_onnx(tmp_path / "evil.onnx"), tmp_path / "models" / "dec.onnx")
    path = retag(write_toy_onnx(tmp_path / "models" / "m.onnx"), {**TOY_CONFIG, "latent": LATENT},
                 drwkv__vae_decoder="dec.onnx")
    with pytest.raises(ArtifactError, match="leads outside"):
        drwkv.Pipeline.load(path)


def test_file_in_folder_rules(tmp_path):
    assert file_in_folder(str(tmp_path), "a/b.onnx", "x") == os.path.join(str(tmp_path), "a/b.onnx")
    for name in ("/etc/passwd", "..", "../x", "a/../../x", "", "a\0b"):
        with pytest.raises(UnsafePathError):
            file_in_folder(str(tmp_path), name, "x")


def test_recorded_vae_folder_outside_the_checkpoint_folder_is_not_used(tmp_path):
    from drwkv.runtime.base import recorded_vae_folder

    (tmp_path / "elsewhere" / "vae").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    artifact = str(tmp_path / "run" / "ckpt.pt")
    for recorded in (str(tmp_path / "elsewhere" / "vae"), "../elsewhere/vae"):
        folder, why = recorded_vae_folder({"vae": recorded}, artifact)
        assert folder is None and "not inside" in why
    (tmp_path / "run" / "vae").mkdir()  # the same name beside the checkpoint is its own
    assert recorded_vae_folder({"vae": str(tmp_path / "elsewhere" / "vae")}, artifact)[0] == str(tmp_path / "run" / "vae")
    os.symlink("/etc/passwd", tmp_path / "run" / "vae" / "config.json")  # a file in it leading out
    assert recorded_vae_folder({"vae": "vae"}, artifact)[0] is None


# 5. External weights: only regular files inside the folder; one line otherwise ----------------

def _external(tmp_path, location=None):
    path = tmp_path / "ext.onnx"
    model = onnx.load(write_toy_onnx(path))
    for tensor in model.graph.initializer:  # only raw_data tensors go to the external file
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    if location is not None:
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(model.SerializeToString())  # as it is: onnx.save_model would follow the locations
    return path


def test_external_weights_load_when_whole(tmp_path):
    denoiser = load_denoiser(onnx=_external(tmp_path), intra_op_threads=1)
    assert denoiser(np.zeros((1, 3, 4, 4), np.float32), [1.0], [0]).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("case", ["outside", "absolute", "symlink", "missing"])
def test_bad_external_weights_are_one_line_artifact_errors(tmp_path, case):
    if case == "outside":
        path, expected = _external(tmp_path, "../x.data"), "leads outside"
    elif case == "absolute":
        path, expected = _external(tmp_path, "/etc/passwd"), "only name files inside"
    elif case == "symlink":
        path, expected = _external(tmp_path), "leads outside"
        os.replace(tmp_path / "ext.onnx.data", tmp_path.parent / f"{tmp_path.name}.data")
        os.symlink(tmp_path.parent / f"{tmp_path.name}.data", tmp_path / "ext.onnx.data")
    else:
        path, expected = _external(tmp_path), "missing"
        os.remove(tmp_path / "ext.onnx.data")
    with pytest.raises(ArtifactError, match=expected) as error:
        drwkv.Pipeline.load(path)
    assert "\n" not in str(error.value)
    one_error_line(run_cli(["--onnx", path, "--steps", "1", "--num-images", "1", "--out", tmp_path / "g.png"]), 1)
    assert not (tmp_path / "g.png").exists()


# 2. Threads follow the setting, absurd counts are refused -------------------------------------

def _many_segments(path, cuts=24):
    """A toy denoiser cut into many ONNX Runtime segments: BiWKV nodes with a Mul between each two."""
    C, H = TOY_CONFIG["in_channels"], TOY_CONFIG["image_size"]
    init = [helper.make_tensor("w", TensorProto.FLOAT, [C], TOY_W), helper.make_tensor("u", TensorProto.FLOAT, [C], TOY_U),
            helper.make_tensor("tok_shape", TensorProto.INT64, [3], [0, -1, C]),
            helper.make_tensor("img_shape", TensorProto.INT64, [4], [0, H, H, C]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]
    nodes = [helper.make_node("Transpose", ["x"], ["x_hwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["x_hwc", "tok_shape"], ["h0"])]
    for i in range(cuts):
        nodes += [helper.make_node("BiWKV", ["w", "u", f"h{i}", f"h{i}"], [f"b{i}"], domain="drwkv", plugin_version="1"),
                  helper.make_node("Mul", [f"b{i}", "half"], [f"h{i + 1}"])]
    nodes += [helper.make_node("Reshape", [f"h{cuts}", "img_shape"], ["img"]),
              helper.make_node("Transpose", ["img"], ["out"], perm=[0, 3, 1, 2])]
    model = toy_denoiser(nodes, init, {f"b{i}": TensorProto.FLOAT for i in range(cuts)})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_thread_count_follows_the_setting(tmp_path, threads):
    threads = min(threads, max_threads())
    path = _many_segments(tmp_path / "segments.onnx")
    script = (f"import os, drwkv\n"
              f"pipe = drwkv.Pipeline.load({str(path)!r}, intra_op_threads={threads})\n"
              f"assert len(pipe.denoiser.session.steps) > 40\n"
              f"pipe(num_images=2, steps=2, seed=0)\n"
              f"print(len(os.listdir('/proc/self/task')))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # ONNX Runtime's pool and OpenMP's have `threads` each (the caller's thread counts in both); a
    # pool per segment would be 24 * (threads - 1) more.
    assert int(result.stdout.split()[-1]) <= 2 * threads + 4, result.stdout


def test_absurd_thread_counts_are_refused(toy, tmp_path):
    for threads in (0, -1, max_threads() + 1, 100000):
        line = one_error_line(run_cli(["--onnx", toy, "--threads", threads, "--out", tmp_path / "g.png"]), 2)
        assert "threads" in line
        with pytest.raises(ValueError, match="threads must be an integer from 1 to"):
            load_denoiser(onnx=toy, intra_op_threads=threads)
    assert not (tmp_path / "g.png").exists()


# 3. Non-finite weights, schedules, settings and samples ---------------------------------------

def test_nan_weight_in_an_onnx_model_is_refused(tmp_path):
    path = tmp_path / "nan.onnx"
    model = onnx.load(write_toy_onnx(path))
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.CopyFrom(numpy_helper.from_array(np.array([0.1, np.nan, 0.2], np.float32), "w"))
    onnx.save(model, path)
    line = one_error_line(run_cli(["--onnx", path, "--steps", "2", "--out", tmp_path / "g.png"]), 1)
    assert "weight w has 1 non-finite value" in line and not (tmp_path / "g.png").exists()


def test_nan_weight_in_a_checkpoint_is_refused_by_the_runtime_and_the_export(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import write_random_checkpoint

    config = {"model": "DRWKV-T/4", "image_size": 8, "in_channels": 1, "num_classes": 2, "learn_sigma": True}
    ckpt_path = write_random_checkpoint(tmp_path / "ckpt.pt", config)
    ckpt = torch.load(ckpt_path, weights_only=True)
    name = next(iter(ckpt["ema"]))
    ckpt["ema"][name].view(-1)[0] = float("inf")
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ArtifactError, match=f"the EMA weight {name} has 1 non-finite value"):
        load_denoiser(ckpt=ckpt_path)
    result = subprocess.run([sys.executable, "-m", "export.to_onnx", str(ckpt_path), "-o", str(tmp_path / "m.onnx")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "non-finite" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(n.endswith(".onnx") or ".tmp" in n for n in os.listdir(tmp_path))


@pytest.mark.parametrize("diffusion", [{"beta_end": 1.5}, {"beta_start": 0.0}, {"beta_end": float("nan")},
                                       {"num_timesteps": 10**9}, {"beta_start": "x"}])
def test_bad_schedules_are_refused(diffusion):
    with pytest.raises(ValueError, match="diffusion schedule"):
        Schedule.from_config({"diffusion": {"schedule": "linear", **diffusion}})


def test_bad_schedule_in_metadata_is_one_line(toy, tmp_path):
    retag(toy, {**TOY_CONFIG, "diffusion": {"schedule": "linear", "beta_end": 1.5}})
    line = one_error_line(run_cli(["--onnx", toy, "--steps", "2", "--out", tmp_path / "g.png"]), 1)
    assert "beta_end must lie in (0, 1)" in line and not (tmp_path / "g.png").exists()


class _Exploding(Denoiser):
    """A denoiser whose output turns to NaN from its third call on."""
    name = "test"
    config = {"model": "x", "image_size": 4, "in_channels": 3, "num_classes": 2, "learn_sigma": False}
    calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return np.full_like(x, np.nan if self.calls >= 3 else 0.1)


def test_non_finite_samples_stop_sampling_with_a_message():
    denoiser = _Exploding()
    with pytest.raises(NonFiniteError, match=r"non-finite values \(NaN or Inf\) at step 3 of 10"):
        sample(denoiser, make_sampler("ddim", Schedule.linear(), 10), np.zeros(2, np.int64), seed=0, cfg_scale=1.0)
    assert denoiser.calls == 3  # stopped there, not after all the steps
    pipe = drwkv.Pipeline(_Exploding())
    with pytest.raises(NonFiniteError):
        pipe(num_images=2, steps=5, cfg_scale=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number"),
    ({"cfg_scale": -3}, "cfg_scale must be a finite number"),
    ({"first_image": -5}, "first_image must be an integer >= 0"),
    ({"first_image": 2**64 - 1, "num_images": 2}, "passes the last image number"),
    ({"sampler": "ddpm", "eta": 0.5}, "eta applies to the ddim sampler only"),
    ({"eta": float("nan")}, "eta must be between 0 and 1"),
    ({"num_images": 2.5}, "num_images must be a positive integer"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\^64\)"),
    ({"num_images": 10**12}, "images of 4x4 need about .* GiB, more than the .* GiB of memory available"),
])
def test_the_library_refuses_what_the_cli_refuses(toy, kwargs, message):
    pipe = drwkv.Pipeline.load(toy, intra_op_threads=1)
    with pytest.raises(ValueError, match=message):
        pipe(**{"steps": 2, **kwargs})


def test_a_class_name_string_is_one_class(toy):
    pipe = drwkv.Pipeline.load(toy, intra_op_threads=1)
    pipe(classes="dog", num_images=3, steps=2)
    assert pipe.last_run["labels"].tolist() == [1, 1, 1]
    pipe(classes=1, num_images=2, steps=2, first_image=2**64 - 2)
    assert pipe.last_run["labels"].tolist() == [1, 1]


# 4. Writes: temp file then rename ------------------------------------------------------------

def test_kill_during_a_png_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "g.png"
    save_png(target, np.full((8, 8, 3), 7, np.uint8), {"which": "old"})
    old = target.read_bytes()
    big = "import numpy as np\nfrom drwkv.png import save_png\n" \
          f"image = np.random.default_rng(0).integers(0, 255, (6000, 6000, 3), dtype=np.uint8)\n" \
          f"while True:\n    save_png({str(target)!r}, image)\n"
    child = subprocess.Popen([sys.executable, "-c", big], cwd=REPO)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill it while the new image is half written
            partial = [n for n in os.listdir(tmp_path) if n.endswith(".tmp.png")]
            if partial and os.path.getsize(tmp_path / partial[0]) > 1_000_000:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the writer never started its temp file")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert target.read_bytes() == old
    with Image.open(target) as image:
        assert image.text["which"] == "old"


def test_a_failed_write_leaves_no_temp_file_and_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]
    with atomic_write(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.onnx"]
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # the usual permissions, not mkstemp's
    with pytest.raises(FileExistsError), atomic_write(target, replace=False) as tmp:
        open(tmp, "wb").close()
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.onnx"]


# 5, 6. Tracebacks and late checks become one line, before any work -----------------------------

@pytest.mark.parametrize("extra, expected", [
    (["--first-image", "18446744073709551615"], "passes the last image number"),
    (["--first-image", "-5"], "first_image must be an integer >= 0"),
    (["--nrow", "100000000"], "nrow must be between 1 and the number of images (16), got 100000000"),
    (["--num-images", "1000000000000"], "more than the"),
    (["--out", "/sys/x.png"], "cannot write --out /sys/x.png"),
    (["--out", "FILE/x.png"], "is a file, not a folder"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--cfg-scale", "nan"], "cfg_scale must be a finite number"),
])
def test_bad_command_lines_are_one_line_before_any_work(toy, tmp_path, extra, expected):
    (tmp_path / "FILE").write_text("keep")
    extra = [str(tmp_path / a[:4]) + a[4:] if a.startswith("FILE") else a for a in extra]
    start = time.perf_counter()
    result = run_cli(["--onnx", toy, "--steps", "1000", "--out", tmp_path / "g.png", *extra])
    line = one_error_line(result)
    assert expected in line, line
    assert time.perf_counter() - start < 60  # refused up front, not after 1000 steps
    assert sorted(os.listdir(tmp_path)) == ["FILE", "toy.onnx"] and (tmp_path / "FILE").read_text() == "keep"


def test_huge_image_size_in_metadata_is_refused(toy, tmp_path):
    retag(toy, {**TOY_CONFIG, "image_size": 100000})
    assert "image_size must be an integer from 1 to 65536" in one_error_line(
        run_cli(["--onnx", toy, "--out", tmp_path / "g.png"]), 1)
    retag(toy, {**TOY_CONFIG, "image_size": 60000})  # allowed, but its arrays are out of reach
    assert "GiB of memory available" in one_error_line(run_cli(["--onnx", toy, "--out", tmp_path / "g.png"]), 1)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("output, expected", [("/sys/x.onnx", "cannot write the ONNX file /sys/x.onnx"),
                                              ("FILE/x.onnx", "is a file, not a folder")])
def test_export_to_an_unwritable_output_is_one_line_before_the_export(tmp_path, output, expected):
    pytest.importorskip("torch")
    from conftest import write_random_checkpoint

    (tmp_path / "FILE").write_text("keep")
    ckpt = write_random_checkpoint(tmp_path / "ckpt.pt", {"model": "DRWKV-T/4", "image_size": 8, "in_channels": 1,
                                                          "num_classes": 2, "learn_sigma": True})
    output = str(tmp_path / output) if output.startswith("FILE") else output
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "export.to_onnx", str(ckpt), "-o", output], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 20
    assert sorted(os.listdir(tmp_path)) == ["FILE", "ckpt.pt"]


# 7. --info shows untrusted text, never runs it on the terminal --------------------------------

def _png_with_text(path, text):
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, pnginfo=info)
    return path


def _settings(**changes):
    text = {"drwkv.backend": "onnxruntime", "drwkv.artifact": "toy.onnx", "drwkv.sampler": "ddim", "drwkv.steps": "4",
            "drwkv.eta": "0.0", "drwkv.cfg_scale": "1.5", "drwkv.seed": "0", "drwkv.batch_size": "16",
            "drwkv.clip_x0": "True", "drwkv.first_image": "0", "drwkv.num_images": "1", "drwkv.nrow": "1",
            "parameters": "Steps: 4"}
    return {**text, **changes}


def test_info_escapes_control_characters(tmp_path):
    path = _png_with_text(tmp_path / "a.png", _settings(parameters="Steps: 4\x1b[2J\x07\nrm -rf ~"))
    result = run_cli(["--info", path])
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == "Steps: 4\\x1b[2J\\x07\\nrm -rf ~" and lines[1].startswith("drwkv-infer --onnx")


@pytest.mark.parametrize("changes, expected", [
    ({"drwkv.artifact": "toy.onnx\nrm -rf ~"}, "drwkv.artifact holds control characters"),
    ({"drwkv.seed": "\x1b[31m0"}, "drwkv.seed holds control characters"),
    ({"drwkv.first_image": "abc"}, "drwkv.first_image is not a whole number"),
    ({"drwkv.backend": "mystery"}, "unknown backend 'mystery'"),
])
def test_info_refuses_tampered_settings_in_one_line(tmp_path, changes, expected):
    result = run_cli(["--info", _png_with_text(tmp_path / "a.png", _settings(**changes))])
    assert expected in one_error_line(result, 1)
    assert "\x1b" not in result.stderr


def test_info_gives_the_shortest_class_cycle(toy, tmp_path):
    assert main(["--onnx", toy, "--steps", "2", "--num-images", "8", "--class", "cat,dog", "--first-image", "3",
                 "--out", str(tmp_path / "g.png")]) == 0
    from drwkv.settings import regenerate_command
    from drwkv.png import read_text

    command = regenerate_command(read_text(tmp_path / "g.png"))
    assert command[command.index("--class") + 1] == "0,1"  # image 3 is class 1, as in the original run


# 8. A refused pickle says what was refused -----------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_code_running_pickle_is_refused_with_the_reason(tmp_path, protocol):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pt"
    torch.save({"format": "drwkv-checkpoint", "payload": Payload()}, path, pickle_protocol=protocol)
    with pytest.raises(ArtifactError) as error:
        load_denoiser(ckpt=path)
    message = str(error.value)
    assert "refused" in message and "never unpickles code" in message and "nothing in the file was run" in message
    assert "weights_only" not in message and "\n" not in message
    result = run_cli(["--ckpt", path, "--out", tmp_path / "g.png"])
    assert "pwned" not in result.stdout and "never unpickles code" in one_error_line(result, 1)


def test_options_of_another_backend_are_refused_in_one_line(toy):
    with pytest.raises(ValueError, match="plugin: not an option of the onnxruntime backend"):
        drwkv.Pipeline.load(toy, plugin="libdrwkv_trt_plugin.so")
