"""TensorRT decoder paths: export.to_trt's decoder plan and drwkv.runtime.tensorrt.TensorRTDecoder.

Without TensorRT (every development and CI machine): the decoder sidecar logic with the stand-in
``tensorrt`` / ``cuda`` modules of test_trt.py, and the decoder kind an engine takes. With
TensorRT, cuda-python, a GPU and the built plugin: a latent model's two plans are built from its
exports and the decoder engine is checked against ONNX Runtime, tiled and whole.
"""
import json
import types

import numpy as np
import pytest
from test_trt import H100, _real_backend_or_skip, backend  # noqa: F401  (backend: the stand-in fixture)

from drwkv.runtime import ArtifactError, load_decoder

SHA = "ab" * 32


def _write_decoder_sidecar(backend, plan, **fields):
    sidecar = {"format": backend.DECODER_SIDECAR_FORMAT, "vae_sha256": SHA, "downsample": 8, "latent_channels": 4,
               "image_channels": 3, "tensorrt_version": "10.16.1", **H100,
               "profile": {"min_batch": 1, "opt_batch": 1, "max_batch": 4, "min_tile": 2, "opt_tile": 32,
                           "max_tile": 64}, **fields}
    backend.sidecar_path(plan).write_text(json.dumps(sidecar))


def test_decoder_sidecar_is_read_and_checked(backend, tmp_path):  # noqa: F811
    plan = tmp_path / "model.vae_decoder.plan"
    _write_decoder_sidecar(backend, plan)
    sidecar = backend.read_sidecar(plan, backend.DECODER_SIDECAR_FORMAT)
    assert sidecar["vae_sha256"] == SHA and sidecar["profile"]["max_tile"] == 64
    backend.check_sidecar(sidecar, plan, "10.16.1", H100)
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10\.16\.1, this is TensorRT 10\.17\.0: rebuild"):
        backend.check_sidecar(sidecar, plan, "10.17.0", H100)


def test_decoder_and_denoiser_plans_are_not_mistaken_for_each_other(backend, tmp_path):  # noqa: F811
    decoder = tmp_path / "model.vae_decoder.plan"
    _write_decoder_sidecar(backend, decoder)
    with pytest.raises(ArtifactError, match="is a VAE decoder engine, not a denoiser"):
        backend.read_sidecar(decoder)
    denoiser = tmp_path / "model.plan"
    backend.sidecar_path(denoiser).write_text(json.dumps({"format": backend.SIDECAR_FORMAT}))
    with pytest.raises(ArtifactError, match="not a drwkv VAE decoder sidecar"):
        backend.read_sidecar(denoiser, backend.DECODER_SIDECAR_FORMAT)
    _write_decoder_sidecar(backend, decoder)
    sidecar = json.loads(backend.sidecar_path(decoder).read_text())
    del sidecar["vae_sha256"]
    backend.sidecar_path(decoder).write_text(json.dumps(sidecar))
    with pytest.raises(ArtifactError, match="lacks some of vae_sha256"):
        backend.read_sidecar(decoder, backend.DECODER_SIDECAR_FORMAT)


def test_missing_decoder_plan_is_an_artifact_error(backend, tmp_path):  # noqa: F811
    with pytest.raises(ArtifactError, match="TensorRT VAE decoder not found: .*missing.plan"):
        backend.TensorRTDecoder(tmp_path / "missing.plan")


def _engine_model(tmp_path, **fields):
    """What load_decoder reads of a TensorRT denoiser, without TensorRT."""
    return types.SimpleNamespace(name="tensorrt", path=str(tmp_path / "model.plan"), in_channels=4,
                                 latent={"downsample": 8, "vae_sha256": SHA}, vae_sha256=SHA, **fields)


def test_an_engine_takes_a_plan_as_its_decoder(tmp_path):
    engine = _engine_model(tmp_path, decoder_file=None)
    with pytest.raises(ArtifactError, match=r"--vae-decoder .*m.vae_decoder.onnx: the decoder of a tensorrt model "
                                            r"is a TensorRT decoder plan"):
        load_decoder(engine, tmp_path / "m.vae_decoder.onnx")
    with pytest.raises(ArtifactError, match=r"model.vae_decoder.plan is missing: build it with python -m "
                                            r"export.to_trt"):
        load_decoder(engine)


def test_decoder_engine_matches_onnx_runtime(tmp_path, tiny_vae):
    backend = _real_backend_or_skip()
    pytest.importorskip("diffusers")
    from test_decoder import latent_config, write_checkpoint

    from drwkv.runtime import load_denoiser
    from export.to_onnx import export_onnx
    from export.to_trt import main

    ckpt = write_checkpoint(tmp_path / "ckpt.pt", latent_config(tiny_vae))
    export_onnx(ckpt, tmp_path / "model.onnx", vae=tiny_vae)
    main([str(tmp_path / "model.onnx"), "-o", str(tmp_path / "model.plan"), "--max-batch", "4",
          "--vae-max-batch", "2", "--vae-max-tile", "16"])
    engine = load_denoiser(engine=tmp_path / "model.plan")
    decoder = load_decoder(engine)
    assert isinstance(decoder, backend.TensorRTDecoder) and decoder.max_tile == 16
    reference = load_decoder(load_denoiser(onnx=tmp_path / "model.onnx"))
    z = np.random.default_rng(0).standard_normal((3, 4, 40, 21)).astype(np.float32)  # 3 > batch 2, 40 > tile 16
    got = decoder(z)
    np.testing.assert_allclose(got, reference(z, tile=16), atol=2e-3)   # the same tiles, TF32 convolutions
    assert decoder.tiles_decoded == 2 * reference.tiles_decoded == 2 * 3 * 2   # two batches of 3 x 2 tiles
