"""Gaussian diffusion for training and previews (the recipe of DiT / improved DDPM).

- linear beta schedule 1e-4 .. 0.02 over 1000 steps; the float64 tables come from
  ``drwkv.schedule.Schedule``, the same ones the numpy samplers use;
- the model predicts epsilon and, with learned sigma, a per-pixel interpolation v in [-1, 1]
  between log(beta_t) and log(posterior variance) (learned-range variance);
- loss = MSE(eps) + the variational bound term, whose mean is computed from a stop-gradient eps
  so that the bound trains only the variance;
- respacing keeps a subset of timesteps with recomputed betas; the model is still called with the
  original timestep indices.

Sampling (training previews, evaluation, every runtime) is drwkv.samplers' alone, in numpy.

    diffusion = GaussianDiffusion()                         # 1000 steps, for training
    losses = diffusion.training_losses(model, x0, t, y)     # dict with "loss", "mse", "vb"
"""
import math

import numpy as np
import torch

from drwkv.schedule import Schedule, linear_betas, respaced_timesteps

__all__ = ["GaussianDiffusion", "diffusion_from_config", "linear_betas", "space_timesteps"]


def space_timesteps(num_timesteps, spec):
    """Timesteps kept by a respacing spec: "ddimN" (evenly strided, DDIM-style, includes 0) or an
    int / "N" (N steps as evenly as possible over [0, num_timesteps - 1])."""
    if isinstance(spec, str) and spec.startswith("ddim"):
        n = int(spec[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return sorted(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {n} evenly strided steps out of {num_timesteps}")
    return respaced_timesteps(num_timesteps, int(spec)).tolist()


def _gather(table, t, ndim):
    """table[t] as a float32 tensor broadcastable against a [B, ...] tensor with ndim dims."""
    out = torch.from_numpy(table).to(t.device)[t].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x):
    # The tanh approximation used by improved DDPM (and DiT), accurate to ~1e-3.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) for data x in [-1, 1] quantised to 256 levels under N(means, e^(2 log_scales))."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    def __init__(self, betas=None, learn_sigma=True, timestep_map=None):
        betas = linear_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        # Index i of this (possibly respaced) process is timestep timestep_map[i] of the original.
        timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)
        self.schedule = schedule = Schedule(timestep_map, betas)
        self.betas = betas
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = timestep_map

        self.alphas_cumprod = schedule.alphas_cumprod
        self.alphas_cumprod_prev = schedule.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = schedule.posterior_variance
        self.posterior_log_variance_clipped = schedule.posterior_log_variance_clipped
        self.posterior_mean_coef1 = schedule.posterior_mean_coef1
        self.posterior_mean_coef2 = schedule.posterior_mean_coef2

    def respace(self, spec):
        """A process over a subset of timesteps ("ddim50", 250, ...) with betas recomputed so that
        its alphas_cumprod equal the original ones at the kept timesteps."""
        kept = self.schedule.subset(space_timesteps(self.num_timesteps, spec))
        return GaussianDiffusion(kept.betas, self.learn_sigma, kept.timesteps)

    # ----- forward process
    def q_sample(self, x0, t, noise):
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def q_posterior(self, x0, xt, t):
        mean = (_gather(self.posterior_mean_coef1, t, xt.ndim) * x0
                + _gather(self.posterior_mean_coef2, t, xt.ndim) * xt)
        return mean, _gather(self.posterior_log_variance_clipped, t, xt.ndim)

    # ----- reverse process
    def p_mean_variance(self, model_output, xt, t, clip_denoised=True):
        """Mean, log-variance and predicted x0 of p(x_{t-1} | x_t) from the raw model output."""
        C = xt.shape[1]
        if self.learn_sigma:
            eps, v = model_output[:, :C], model_output[:, C:]
            min_log = _gather(self.posterior_log_variance_clipped, t, xt.ndim)
            max_log = _gather(np.log(self.betas), t, xt.ndim)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output
            log_variance = _gather(self.posterior_log_variance_clipped, t, xt.ndim)
        pred_x0 = (_gather(self.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt
                   - _gather(self.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_x0, xt, t)
        return mean, log_variance, pred_x0, eps

    def model_timesteps(self, t):
        """Indices of this process -> the original timesteps the model was trained on."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    # ----- training
    def training_losses(self, model, x0, t, y, noise=None):
        """Per-example losses {"loss", "mse", "vb"} for model(x_t, t, y) at indices t [B]."""
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_timesteps(t), y)
        C = x0.shape[1]
        mse = ((out[:, :C] - noise) ** 2).mean(dim=(1, 2, 3))
        if not self.learn_sigma:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        # The bound trains only the variance: its mean comes from a frozen eps prediction.
        frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
        vb = self.vb_term(frozen, x0, xt, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def vb_term(self, model_output, x0, xt, t):
        """Variational bound term in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0 and the
        discretised decoder NLL at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, xt, t)
        mean, log_var, _, _ = self.p_mean_variance(model_output, xt, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


def diffusion_from_config(config):
    """The GaussianDiffusion described by a checkpoint config ("diffusion", see Schedule.from_config,
    and "learn_sigma")."""
    return GaussianDiffusion(Schedule.from_config(config).betas, learn_sigma=bool(config["learn_sigma"]))
