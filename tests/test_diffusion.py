import numpy as np
import pytest
import torch

from drwkv.diffusion import (GaussianDiffusion, diffusion_from_config, linear_betas, normal_kl,
                             space_timesteps)
from drwkv.model import build_model


def test_linear_schedule():
    betas = linear_betas()
    assert betas.dtype == np.float64 and len(betas) == 1000
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    d = GaussianDiffusion()
    np.testing.assert_allclose(d.alphas_cumprod, np.cumprod(1 - betas))
    assert d.alphas_cumprod[-1] < 5e-5  # x_T is essentially pure noise


def test_q_sample_matches_closed_form():
    d = GaussianDiffusion()
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 400, 999])
    ab = torch.tensor(d.alphas_cumprod[[0, 400, 999]], dtype=torch.float32).view(3, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_space_timesteps():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    kept = space_timesteps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim900")  # no stride gives exactly 900 steps
    with pytest.raises(ValueError):
        space_timesteps(1000, 1001)


def test_respaced_process_keeps_alphas_cumprod():
    d = GaussianDiffusion()
    s = d.respace("ddim25")
    assert s.num_timesteps == 25
    np.testing.assert_allclose(s.alphas_cumprod, d.alphas_cumprod[s.timestep_map], rtol=1e-12)
    assert s.model_timesteps(torch.tensor([0, 24])).tolist() == [0, 960]


def test_vb_is_zero_for_the_true_posterior():
    # A model that predicts the true noise and the posterior variance (v = -1) has KL = 0 for t > 0.
    d = GaussianDiffusion(learn_sigma=True)
    x0, noise = torch.rand(4, 1, 6, 6) * 2 - 1, torch.randn(4, 1, 6, 6)
    t = torch.tensor([1, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    perfect = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    vb = d.vb_term(perfect, x0, xt, t)
    assert vb.abs().max() < 1e-3
    # The largest variance (beta_t) is worse; clearly so at small t where beta_t and the posterior differ.
    worse = d.vb_term(torch.cat([noise, torch.ones_like(noise)], dim=1), x0, xt, t)
    assert (worse[:2] > 1e-3).all()


def test_normal_kl():
    assert normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)) == 0
    # KL(N(1,1) || N(0,1)) = 1/2
    assert normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)) == 0.5


def test_vb_does_not_train_the_mean():
    d = GaussianDiffusion(learn_sigma=True)
    model = build_model({"model": "DRWKV-T/4", "image_size": 8, "in_channels": 1, "num_classes": 3,
                         "learn_sigma": True})
    x0, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 300]), torch.tensor([0, 1])
    out = torch.zeros(2, 2, 8, 8, requires_grad=True)
    d.training_losses(lambda *args: out, x0, t, y)["vb"].sum().backward()
    assert torch.equal(out.grad[:, :1], torch.zeros_like(out.grad[:, :1]))  # eps channels: no VB gradient
    assert out.grad[:, 1:].abs().sum() > 0
    assert set(d.training_losses(model, x0, t, y)) == {"loss", "mse", "vb"}


def test_diffusion_from_config():
    cfg = {"learn_sigma": False, "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                                               "num_timesteps": 500}}
    d = diffusion_from_config(cfg)
    assert d.num_timesteps == 500 and not d.learn_sigma and d.betas[-1] == 0.02
    with pytest.raises(ValueError, match="cosine"):
        diffusion_from_config({"learn_sigma": True, "diffusion": dict(cfg["diffusion"], schedule="cosine")})
