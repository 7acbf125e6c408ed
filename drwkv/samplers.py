"""Fixed-step samplers in numpy (no torch): DDPM, DDIM and DPM-Solver++(2M), with classifier-free guidance.

One implementation serves every backend (TensorRT, ONNX Runtime, PyTorch): a sampler only sees
numpy arrays, and the model is any callable ``denoiser(x, t, y) -> out`` (see ``drwkv.runtime``).

Structure. A sampler walks the respaced schedule (``drwkv.schedule``) from the noisiest kept
timestep down to 0 in ``steps`` model calls. Step i = 0 .. steps-1 works on process index
j = steps-1-i (j = 0 is the last step, at timestep 0). Each step is one explicit function

    x_next = sampler.step(i, x, model_out, noise)

given x (float32 [B,C,H,W]), the model output at (x, sampler.timestep(i)) (float32 [B,C,H,W], or
[B,2C,H,W] with learned variance: eps then v in [-1, 1]) and this step's noise (standard normal like
x, or None for deterministic samplers). Coefficients are computed in float64 from the schedule and
applied as Python floats, so the arithmetic on the arrays stays float32. The loop driver ``sample``
calls the denoiser and takes the noise from ``drwkv.noise`` (a function of seed, image, step and
element, the same in the C++ loop ``drwkv::sample``):

    images = first_image + [0 .. B-1]                           # global image indices
    x = standard_normal(seed, images, 0, [C,H,W])               # x_T is noise step 0
    for i in range(steps):
        out = guided_output(denoiser, x, timestep(i), y, cfg_scale, null_class)
        noise = standard_normal(seed, images, i + 1, [C,H,W]) if sampler.stochastic else None
        x = sampler.step(i, x, out, noise)

Shared notation, at process index j (a = alphabar'_j, a_prev = alphabar'_{j-1}, a_prev = 1 at j = 0):

    eps       = out[:, :C]
    x0        = sqrt(1/a) x - sqrt(1/a - 1) eps,  then clipped to [-1, 1] when clip_x0 (pixel models)
"""
import numpy as np

from drwkv.noise import standard_normal
from drwkv.schedule import Schedule

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


class Sampler:
    """Base class: the respaced process and the x0 prediction shared by all samplers."""

    name = ""
    #: Whether step() takes noise. A stochastic sampler is given fresh noise at every step, also at
    #: the last one where it is not used, so that the random stream does not depend on the step.
    stochastic = False

    def __init__(self, schedule: Schedule, steps: int, clip_x0: bool = True):
        self.process = schedule.respace(steps)
        self.steps = len(self.process)
        self.clip_x0 = clip_x0
        p = self.process
        # Per process index j, float64.
        self.alphas_cumprod = p.alphas_cumprod
        self.alphas_cumprod_prev = p.alphas_cumprod_prev
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / p.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / p.alphas_cumprod - 1.0)

    def reset(self):
        """Forget any state carried between steps; the loop driver calls it before step 0."""

    def index(self, i):
        """Process index j of step i (steps run from j = steps-1 down to 0)."""
        if not 0 <= i < self.steps:
            raise IndexError(f"step {i} out of range for a {self.steps}-step sampler")
        return self.steps - 1 - i

    def timestep(self, i):
        """The original timestep the model is called with at step i."""
        return int(self.process.timesteps[self.index(i)])

    def predict_x0(self, j, x, eps):
        """x0 = sqrt(1/a_j) x - sqrt(1/a_j - 1) eps, clipped to [-1, 1] when clip_x0."""
        x0 = float(self.sqrt_recip_alphas_cumprod[j]) * x - float(self.sqrt_recipm1_alphas_cumprod[j]) * eps
        return np.clip(x0, -1.0, 1.0) if self.clip_x0 else x0

    def step(self, i, x, model_out, noise=None):
        raise NotImplementedError


class DDPM(Sampler):
    """Ancestral sampling from p(x_{j-1} | x_j) (Ho et al. 2020) on the respaced process.

        mean    = coef1_j x0 + coef2_j x             (mean of the posterior q(x_{j-1} | x_j, x0))
        log_var = frac log(beta'_j) + (1 - frac) logvar_post_j,   frac = (v + 1) / 2
                                                     (learned range, when out has 2C channels)
        log_var = logvar_post_j                      (fixed posterior variance, when out has C channels)
        x_next  = mean + exp(log_var / 2) noise      for j > 0;   x_next = mean at j = 0

    coef1_j, coef2_j and logvar_post_j are the schedule's posterior_mean_coef1/2 and
    posterior_log_variance_clipped.
    """

    name = "ddpm"
    stochastic = True

    def __init__(self, schedule, steps, clip_x0=True):
        super().__init__(schedule, steps, clip_x0)
        p = self.process
        self.coef1, self.coef2 = p.posterior_mean_coef1, p.posterior_mean_coef2
        self.log_betas = np.log(p.betas)
        self.posterior_log_variance = p.posterior_log_variance_clipped

    def step(self, i, x, model_out, noise=None):
        j = self.index(i)
        C = x.shape[1]
        x0 = self.predict_x0(j, x, model_out[:, :C])
        mean = float(self.coef1[j]) * x0 + float(self.coef2[j]) * x
        if j == 0:
            return mean
        if model_out.shape[1] == 2 * C:
            frac = (model_out[:, C:] + 1.0) / 2.0
            log_var = frac * float(self.log_betas[j]) + (1.0 - frac) * float(self.posterior_log_variance[j])
            return mean + np.exp(0.5 * log_var) * noise
        return mean + float(np.exp(0.5 * self.posterior_log_variance[j])) * noise


class DDIM(Sampler):
    """DDIM (Song et al. 2021) with stochasticity eta; eta = 1 is DDPM with the fixed posterior variance.

        eps'    = (sqrt(1/a) x - x0) / sqrt(1/a - 1)        (eps re-derived from the clipped x0)
        sigma   = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev)
        x_next  = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps' + sigma noise

    At j = 0, a_prev = 1 so sigma = 0 and x_next = x0.
    """

    name = "ddim"

    def __init__(self, schedule, steps, eta=0.0, clip_x0=True):
        super().__init__(schedule, steps, clip_x0)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be between 0 and 1, got {eta}")
        self.eta = float(eta)
        self.stochastic = eta > 0
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sigmas = eta * np.sqrt((1.0 - a_prev) / (1.0 - a)) * np.sqrt(1.0 - a / a_prev)

    def step(self, i, x, model_out, noise=None):
        j = self.index(i)
        C = x.shape[1]
        x0 = self.predict_x0(j, x, model_out[:, :C])
        eps = (float(self.sqrt_recip_alphas_cumprod[j]) * x - x0) / float(self.sqrt_recipm1_alphas_cumprod[j])
        a_prev, sigma = self.alphas_cumprod_prev[j], self.sigmas[j]
        x_next = float(np.sqrt(a_prev)) * x0 + float(np.sqrt(1.0 - a_prev - sigma ** 2)) * eps
        if sigma > 0:
            x_next = x_next + float(sigma) * noise
        return x_next


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): multistep second-order solver in data (x0) prediction.

    With alpha_j = sqrt(a_j), sigma_j = sqrt(1 - a_j) and lambda_j = log(alpha_j / sigma_j), step i
    goes from index j to j-1:

        h       = lambda_{j-1} - lambda_j
        D       = x0                                               at the first step, and into j-1 = 0
        D       = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,  r = h_prev / h   otherwise
                  (x0_prev: the x0 of the previous step; h_prev: the previous step's h)
        x_next  = (sigma_{j-1} / sigma_j) x - alpha_{j-1} (exp(-h) - 1) D

    The last two steps are first order (D = x0; "lower order final" in DPM-Solver): the step into
    timestep 0 is the largest in lambda of the schedule (alphabar_0 is nearly 1), and extrapolating
    x0 across it with r << 1 is unstable at small step counts; the final step (j = 0) goes to the
    clean data (sigma = 0, h = infinity), where x_next = x0. This is a multistep method: the sampler
    keeps x0_prev between steps, so steps must run in order after reset().
    """

    name = "dpm++2m"

    def __init__(self, schedule, steps, clip_x0=True):
        super().__init__(schedule, steps, clip_x0)
        a = self.alphas_cumprod
        self.alphas = np.sqrt(a)
        self.sigmas = np.sqrt(1.0 - a)
        self.lambdas = np.log(self.alphas) - np.log(self.sigmas)
        self.prev_x0 = None

    def reset(self):
        self.prev_x0 = None

    def step(self, i, x, model_out, noise=None):
        j = self.index(i)
        C = x.shape[1]
        x0 = self.predict_x0(j, x, model_out[:, :C])
        if j == 0:
            x_next = x0
        else:
            h = self.lambdas[j - 1] - self.lambdas[j]
            if self.prev_x0 is None or j == 1:
                d = x0
            else:
                r = (self.lambdas[j] - self.lambdas[j + 1]) / h
                d = float(1.0 + 0.5 / r) * x0 - float(0.5 / r) * self.prev_x0
            x_next = (float(self.sigmas[j - 1] / self.sigmas[j]) * x
                      - float(self.alphas[j - 1] * np.expm1(-h)) * d)
        self.prev_x0 = x0
        return x_next


def make_sampler(name, schedule, steps, eta=0.0, clip_x0=True):
    """A sampler by name ("ddpm", "ddim", "dpm++2m") over ``steps`` respaced steps of ``schedule``."""
    if name == "ddpm":
        return DDPM(schedule, steps, clip_x0)
    if name == "ddim":
        return DDIM(schedule, steps, eta, clip_x0)
    if name == "dpm++2m":
        return DPMSolverPP2M(schedule, steps, clip_x0)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def guided_output(denoiser, x, t, y, cfg_scale, null_class, guidance_channels=None):
    """The model output for the samplers, with classifier-free guidance when cfg_scale != 1.

    Guidance makes ONE batched call on [x; x] with labels [y; null] (as DiT's forward_with_cfg):

        G       = guidance_channels (the config's "guidance_channels"; None: all C channels)
        eps     = eps_uncond + cfg_scale (eps_cond - eps_uncond)     (the first G channels)
        out     = concat(eps, the other channels of the conditional half)

    The paper's released models guide the first 3 channels only, also for 4-channel latents, so
    their importer sets G = 3. null_class is num_classes: 0 is an unconditional model, which has
    nothing to guide (ValueError unless cfg_scale is 1).
    """
    if cfg_scale == 1.0:
        return denoiser(x, t, y)
    if null_class == 0:
        raise ValueError(f"an unconditional model (num_classes 0) takes no guidance; use cfg_scale 1, not {cfg_scale}")
    B, C = x.shape[:2]
    G = C if guidance_channels is None else int(guidance_channels)
    if not 1 <= G <= C:
        raise ValueError(f"guidance_channels must be between 1 and {C}, got {G}")
    out = denoiser(np.concatenate([x, x]), np.concatenate([t, t]),
                   np.concatenate([y, np.full_like(y, null_class)]))
    cond, uncond = out[:B], out[B:]
    eps = uncond[:, :G] + np.float32(cfg_scale) * (cond[:, :G] - uncond[:, :G])
    return np.concatenate([eps, cond[:, G:]], axis=1)


def sample(denoiser, sampler, y, seed, cfg_scale=1.0, progress=None, first_image=0):
    """Generate len(y) images with ``denoiser`` (x, t, y -> out): float32 [B,C,H,W], about [-1, 1].

    y: int64 [B] class labels (num_classes = null class). The images are number first_image ..
    first_image + B - 1 of a run with ``seed``: each one's noise depends on (seed, its number) only,
    so it does not change with the batch it is drawn in (see drwkv.noise). progress: optional
    wrapper around the step iterator (e.g. tqdm).
    """
    config = denoiser.config
    y = np.asarray(y, dtype=np.int64)
    shape = (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))
    images = np.arange(first_image, first_image + len(y), dtype=np.uint64)
    x = standard_normal(seed, images, 0, shape)
    sampler.reset()
    steps = range(sampler.steps)
    for i in progress(steps) if progress is not None else steps:
        t = np.full(len(y), sampler.timestep(i), dtype=np.float32)
        out = guided_output(denoiser, x, t, y, cfg_scale, int(config["num_classes"]), config.get("guidance_channels"))
        noise = standard_normal(seed, images, i + 1, shape) if sampler.stochastic else None
        with np.errstate(invalid="ignore", over="ignore"):  # reported below, once, as an error
            x = sampler.step(i, x, out, noise)
        if not np.isfinite(x).all():  # a NaN never recovers: stop instead of writing black images
            raise NonFiniteError(f"sampling gave non-finite values (NaN or Inf) at step {i + 1} of {sampler.steps} "
                                 f"(images {first_image}..{first_image + len(y) - 1}): the model's weights or "
                                 f"the settings are broken")
    return x


class NonFiniteError(RuntimeError):
    """Sampling produced NaN or Inf; the message is one line."""
