"""drwkv.vae: diffusers AutoencoderKL folders, their latent-space record, encode/decode, bad folders."""
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from drwkv import vae as V  # noqa: E402


def test_latent_space_record(tiny_vae):
    record = V.latent_space(tiny_vae, 32)
    assert record["vae"] == str(tiny_vae) and record["scaling_factor"] == 0.5
    assert (record["channels"], record["downsample"], record["image_size"]) == (4, 4, 32)
    assert record["vae_sha256"] == V.weights_sha256(tiny_vae) and len(record["vae_sha256"]) == 64


def test_encode_decode_speak_the_denoiser_space(tiny_vae):
    vae = V.load_vae(tiny_vae)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = V.encode(vae, x)
    assert mean.shape == std.shape == (2, 4, 8, 8) and bool((std > 0).all())
    posterior = vae.encode(x).latent_dist
    torch.testing.assert_close(mean, posterior.mean * 0.5)
    image = V.decode(vae, mean)
    assert image.shape == (2, 3, 32, 32) and float(image.abs().max()) <= 1.0
    torch.testing.assert_close(image, vae.decode(mean / 0.5).sample.clamp(-1, 1))


def test_bad_folders_are_one_line_errors(tiny_vae, tmp_path):
    with pytest.raises(V.VAEError, match="VAE folder not found"):
        V.load_vae(tmp_path / "missing")
    with pytest.raises(V.VAEError, match="not a diffusers VAE folder"):
        V.load_vae(tmp_path)
    broken = shutil.copytree(tiny_vae, tmp_path / "broken")
    weights = broken / V.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(V.VAEError, match="cannot be loaded") as e:
        V.load_vae(broken)
    assert "\n" not in str(e.value)
    (broken / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(V.VAEError, match="not an AutoencoderKL"):
        V.read_vae_config(broken)
    with pytest.raises(V.VAEError, match="not divisible"):
        V.latent_space(tiny_vae, 30)
