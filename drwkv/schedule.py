"""The diffusion noise schedule in numpy (no torch), shared by every sampler and backend.

Notation (DDPM, Ho et al. 2020):

    beta_t                  linear from beta_start to beta_end over t = 0 .. T-1 (float64)
    alphabar_t              = prod_{s <= t} (1 - beta_s)
    q(x_t | x_0)            = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)

Respacing (improved DDPM): sampling with N < T steps keeps the timesteps

    kept = sorted(unique(round(linspace(0, T-1, N))))      (integers; round half to even)

(N = 1 keeps [T-1]: a single step must start from pure noise; linspace would give [0].)

and defines a shorter process over them with the same alphabar at the kept timesteps:

    alphabar'_j = alphabar_{kept[j]},    beta'_j = 1 - alphabar'_j / alphabar'_{j-1}   (alphabar'_{-1} = 1)

The model is still called with the original timestep kept[j].
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: The most diffusion timesteps a schedule may have (DiT's models use 1000).
MAX_TIMESTEPS = 100_000


def linear_betas(num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """beta_t for t = 0 .. num_timesteps-1, evenly spaced, float64."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def respaced_timesteps(num_timesteps, steps):
    """The original timesteps kept by an N-step sampler, ascending: unique(round(linspace(0, T-1, N)))."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64))


@dataclass(frozen=True)
class Schedule:
    """A (possibly respaced) discrete diffusion process, indexed j = 0 .. len-1 in increasing noise.

    Every table is float64 and has one entry per kept timestep:

        timesteps[j]                 original timestep given to the model
        betas[j]                     beta'_j
        alphas_cumprod[j]            alphabar'_j
        alphas_cumprod_prev[j]       alphabar'_{j-1}, with alphabar'_{-1} = 1
        posterior_variance[j]        beta'_j (1 - alphabar'_{j-1}) / (1 - alphabar'_j)
                                     (the variance of q(x_{j-1} | x_j, x_0))
        posterior_log_variance_clipped[j]
                                     log posterior_variance[j], at j = 0 the j = 1 value (it is 0 there)
        posterior_mean_coef1[j]      beta'_j sqrt(alphabar'_{j-1}) / (1 - alphabar'_j)            (multiplies x_0)
        posterior_mean_coef2[j]      (1 - alphabar'_{j-1}) sqrt(1 - beta'_j) / (1 - alphabar'_j)  (multiplies x_j)
    """

    timesteps: np.ndarray
    betas: np.ndarray

    @classmethod
    def linear(cls, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        """The full (unrespaced) linear schedule; ValueError unless 1 <= num_timesteps <= MAX_TIMESTEPS
        and both betas lie in (0, 1) (a beta outside gives NaN images)."""
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) \
                or not 1 <= num_timesteps <= MAX_TIMESTEPS:
            raise ValueError(f"the diffusion schedule's num_timesteps must be an integer from 1 to {MAX_TIMESTEPS}, "
                             f"got {num_timesteps!r}")
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0.0 < beta < 1.0:  # also refuses NaN
                raise ValueError(f"the diffusion schedule's {name} must lie in (0, 1), got {beta!r}")
        return cls(np.arange(num_timesteps, dtype=np.int64), linear_betas(num_timesteps, beta_start, beta_end))

    @classmethod
    def from_config(cls, config):
        """The schedule of a model config: its "diffusion" entry (DiT's linear 1e-4 .. 0.02 x 1000 if absent)."""
        diffusion = dict(config.get("diffusion") or {})
        kind = diffusion.get("schedule", "linear")
        if kind != "linear":
            raise ValueError(f"unsupported diffusion schedule {kind!r} (only 'linear' is implemented)")
        try:
            steps, start, end = (diffusion.get("num_timesteps", 1000), float(diffusion.get("beta_start", 1e-4)),
                                 float(diffusion.get("beta_end", 0.02)))
        except (TypeError, ValueError):
            raise ValueError(f"the model's diffusion schedule is not numbers: {diffusion}") from None
        return cls.linear(steps, start, end)

    def __len__(self):
        return len(self.betas)

    def respace(self, steps):
        """The N-step process over respaced_timesteps(len(self), steps); call on the full schedule."""
        return self.subset(respaced_timesteps(len(self), steps))

    def subset(self, kept):
        """The process over the indices `kept` (ascending), with betas recomputed so that its
        alphas_cumprod equal this one's at the kept steps."""
        kept = np.asarray(kept, dtype=np.int64)
        alphas_cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
        return Schedule(self.timesteps[kept], betas)

    @cached_property
    def alphas_cumprod(self):
        return np.cumprod(1.0 - self.betas)

    @cached_property
    def alphas_cumprod_prev(self):
        return np.append(1.0, self.alphas_cumprod[:-1])

    @cached_property
    def posterior_variance(self):
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_log_variance_clipped(self):
        var = self.posterior_variance
        if len(var) == 1:  # a one-step process has no j = 1; the only step adds no noise anyway
            return np.log(self.betas)
        return np.log(np.append(var[1], var[1:]))

    @cached_property
    def posterior_mean_coef1(self):
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef2(self):
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)
