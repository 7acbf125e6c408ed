"""The numpy schedule and samplers: tables, step formulas, guidance, determinism, and accuracy on
data whose exact denoiser is known in closed form."""
import numpy as np
import pytest

from drwkv.noise import standard_normal
from drwkv.samplers import DDIM, DDPM, DPMSolverPP2M, guided_output, make_sampler, sample
from drwkv.schedule import Schedule, respaced_timesteps

SCHEDULE = Schedule.linear()


def test_respaced_timesteps_follow_rounded_linspace():
    assert list(respaced_timesteps(1000, 5)) == [0, 250, 500, 749, 999]  # 249.75, 499.5 -> 500, 749.25
    assert list(respaced_timesteps(1000, 1000)) == list(range(1000))
    assert list(respaced_timesteps(1000, 1)) == [999]
    for steps in (2, 7, 20, 50, 250, 999):
        kept = respaced_timesteps(1000, steps)
        assert len(kept) == steps and kept[0] == 0 and kept[-1] == 999
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 0)
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 1001)


def test_respacing_keeps_alphas_cumprod_and_full_respacing_is_identity():
    process = SCHEDULE.respace(20)
    np.testing.assert_allclose(process.alphas_cumprod, SCHEDULE.alphas_cumprod[process.timesteps], rtol=1e-12)
    full = SCHEDULE.respace(1000)
    np.testing.assert_allclose(full.betas, SCHEDULE.betas, rtol=1e-12, atol=1e-15)
    assert SCHEDULE.betas[0] == 1e-4 and SCHEDULE.betas[-1] == 0.02 and SCHEDULE.betas.dtype == np.float64


def test_schedule_matches_the_training_diffusion():
    diffusion = pytest.importorskip("drwkv.diffusion")
    for steps in (50, 1000):
        ours = SCHEDULE.respace(steps)
        theirs = diffusion.GaussianDiffusion().respace(steps)
        np.testing.assert_array_equal(ours.timesteps, theirs.timestep_map)
        for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1",
                     "posterior_mean_coef2"):
            np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-12, err_msg=name)


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_ddim_eta1_over_all_steps_is_the_ddpm_posterior_step():
    ddpm, ddim = DDPM(SCHEDULE, 1000), DDIM(SCHEDULE, 1000, eta=1.0)
    x = _random((2, 3, 4, 4), 0)
    for i in (0, 1, 500, 998, 999):
        eps = 0.7 * _random(x.shape, i + 1)         # C channels: DDPM uses the fixed posterior variance
        noise = _random(x.shape, i + 2)
        expected = ddpm.step(i, x, eps, noise)
        np.testing.assert_allclose(ddim.step(i, x, eps, noise), expected, rtol=1e-5, atol=1e-5)
        assert expected.dtype == np.float32


def test_ddpm_learned_range_variance_interpolates_log_variances():
    ddpm = DDPM(SCHEDULE, 50, clip_x0=False)
    x, eps, noise = _random((1, 1, 2, 2), 0), _random((1, 1, 2, 2), 1), _random((1, 1, 2, 2), 2)
    i = 10
    j = ddpm.index(i)
    mean = ddpm.step(i, x, eps, np.zeros_like(noise))
    for v, log_var in ((-1.0, ddpm.process.posterior_log_variance_clipped[j]), (1.0, np.log(ddpm.process.betas[j]))):
        out = np.concatenate([eps, np.full_like(eps, v)], axis=1)
        np.testing.assert_allclose(ddpm.step(i, x, out, noise), mean + np.exp(0.5 * log_var) * noise, rtol=1e-5)


def test_ddpm_step_matches_the_training_diffusion():
    torch = pytest.importorskip("torch")
    from drwkv.diffusion import GaussianDiffusion

    theirs = GaussianDiffusion(learn_sigma=True).respace(25)
    ddpm = DDPM(SCHEDULE, 25)
    x, noise = _random((2, 3, 4, 4), 0), _random((2, 3, 4, 4), 1)
    out = np.concatenate([2 * _random(x.shape, 2), np.tanh(_random(x.shape, 3))], axis=1)
    for i in (0, 12, 23):
        j = ddpm.index(i)
        t = torch.full((2,), j, dtype=torch.long)
        mean, log_var, _, _ = theirs.p_mean_variance(torch.from_numpy(out), torch.from_numpy(x), t)
        expected = (mean + torch.exp(0.5 * log_var) * torch.from_numpy(noise)).numpy()
        np.testing.assert_allclose(ddpm.step(i, x, out, noise), expected, rtol=1e-5, atol=1e-6)


def test_last_step_returns_x0_and_timesteps_descend():
    x, eps = _random((1, 1, 3, 3), 0), 0.1 * _random((1, 1, 3, 3), 1)
    for name in ("ddpm", "ddim", "dpm++2m"):
        sampler = make_sampler(name, SCHEDULE, 10, clip_x0=False)
        assert [sampler.timestep(i) for i in range(10)] == sorted(respaced_timesteps(1000, 10), reverse=True)
        sampler.reset()
        x0 = sampler.predict_x0(0, x, eps)
        np.testing.assert_allclose(sampler.step(9, x, eps, np.zeros_like(x)), x0, rtol=1e-5, atol=1e-6)


class PointDenoiser:
    """The exact eps predictor for data that is a single image x0: eps = (x - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, x0, learn_sigma=False):
        self.x0 = x0
        C, H, _ = x0.shape
        self.config = {"in_channels": C, "image_size": H, "num_classes": 2, "learn_sigma": learn_sigma}

    def __call__(self, x, t, y):
        a = SCHEDULE.alphas_cumprod[t.astype(np.int64)].reshape(-1, 1, 1, 1)
        eps = ((x - np.sqrt(a) * self.x0) / np.sqrt(1 - a)).astype(np.float32)
        if self.config["learn_sigma"]:
            return np.concatenate([eps, np.zeros_like(eps)], axis=1)
        return eps


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++2m"])
def test_samplers_recover_a_point_distribution(name):
    x0 = np.clip(_random((1, 4, 4), 5), -0.9, 0.9)
    sampler = make_sampler(name, SCHEDULE, 15)
    out = sample(PointDenoiser(x0, learn_sigma=True), sampler, np.array([0, 1]), seed=0)
    np.testing.assert_allclose(out, np.broadcast_to(x0, out.shape), atol=1e-4)


def _gaussian_flow_error(sampler, s=0.5):
    """Data N(0, s^2) per pixel: the exact denoiser is eps = sqrt(1-a) x / (a s^2 + 1 - a), and the
    probability-flow ODE maps x_T to x_T * s / sqrt(a_T s^2 + 1 - a_T). Returns the max deviation."""
    class Gaussian:
        config = {"in_channels": 1, "image_size": 8, "num_classes": 1, "learn_sigma": False}

        def __call__(self, x, t, y):
            a = SCHEDULE.alphas_cumprod[t.astype(np.int64)].reshape(-1, 1, 1, 1)
            return (np.sqrt(1 - a) * x / (a * s * s + 1 - a)).astype(np.float32)

    sampler.clip_x0 = False
    x_T = standard_normal(3, np.arange(4), 0, (1, 8, 8))
    out = sample(Gaussian(), sampler, np.zeros(4, dtype=np.int64), seed=3)
    a_T = SCHEDULE.alphas_cumprod[sampler.timestep(0)]
    return np.abs(out - x_T * s / np.sqrt(a_T * s * s + 1 - a_T)).max()


def test_dpm_solver_beats_ddim_and_both_converge():
    ddim = {n: _gaussian_flow_error(DDIM(SCHEDULE, n)) for n in (20, 40, 50, 250)}
    dpm = {n: _gaussian_flow_error(DPMSolverPP2M(SCHEDULE, n)) for n in (20, 50, 250)}
    assert dpm[20] < ddim[20] / 2.5 and dpm[50] < ddim[50] / 10
    assert 1.7 < ddim[20] / ddim[40] < 2.3          # DDIM is first order
    assert ddim[250] < 0.02 and dpm[250] < 1e-3


class Recorder:
    """A fake denoiser recording its calls; eps = 0.1 x + 0.01 y, v = t / 1000 - 0.5."""

    def __init__(self, learn_sigma=True):
        self.config = {"in_channels": 2, "image_size": 4, "num_classes": 5, "learn_sigma": learn_sigma}
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append((x.copy(), t.copy(), y.copy()))
        eps = 0.1 * x + 0.01 * y.reshape(-1, 1, 1, 1)
        v = np.broadcast_to((t / 1000 - 0.5).reshape(-1, 1, 1, 1), x.shape)
        return np.concatenate([eps, v], axis=1).astype(np.float32)


def test_guidance_is_one_batched_call_on_eps_only():
    model = Recorder()
    x, t, y = _random((3, 2, 4, 4), 0), np.array([5, 5, 5], np.float32), np.array([0, 1, 4])
    out = guided_output(model, x, t, y, 2.5, null_class=5)
    assert len(model.calls) == 1
    cx, ct, cy = model.calls[0]
    np.testing.assert_array_equal(cx, np.concatenate([x, x]))
    np.testing.assert_array_equal(cy, [0, 1, 4, 5, 5, 5])
    cond, uncond = 0.1 * x + 0.01 * y.reshape(-1, 1, 1, 1), 0.1 * x + 0.05
    np.testing.assert_allclose(out[:, :2], uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 2:], 5 / 1000 - 0.5)      # variance channels of the conditional half
    model.calls.clear()
    np.testing.assert_array_equal(guided_output(model, x, t, y, 1.0, null_class=5), model(x, t, y))
    assert len(model.calls[0][0]) == 3                          # no doubled batch without guidance


def test_sampling_is_deterministic_per_seed_and_draws_x_T_first():
    def run(seed, name="ddpm"):
        model = Recorder()
        x = sample(model, make_sampler(name, SCHEDULE, 6), np.array([1, 2]), seed, cfg_scale=1.5)
        return x, model

    a, model = run(7)
    b, _ = run(7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2, 2, 4, 4)
    assert not np.array_equal(a, run(8)[0])
    x_T = standard_normal(7, [0, 1], 0, (2, 4, 4))
    np.testing.assert_array_equal(model.calls[0][0][:2], x_T)
    assert [int(c[1][0]) for c in model.calls] == [999, 799, 599, 400, 200, 0]


def test_dpm_solver_state_resets_between_runs():
    model = Recorder()
    sampler = DPMSolverPP2M(SCHEDULE, 5)
    first = sample(model, sampler, np.array([3]), seed=1)
    second = sample(model, sampler, np.array([3]), seed=1)
    np.testing.assert_array_equal(first, second)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", SCHEDULE, 10)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", SCHEDULE, 10, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        make_sampler("ddim", SCHEDULE, 0)
    with pytest.raises(IndexError):
        make_sampler("ddim", SCHEDULE, 10).step(10, np.zeros((1, 1, 2, 2), np.float32),
                                                np.zeros((1, 1, 2, 2), np.float32))
