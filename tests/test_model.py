import hashlib
import os

import pytest
import torch

from drwkv.model import MODEL_CONFIGS, build_model, load_checkpoint, q_shift, read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(REPO, "pretrained", "fashion-mnist-drwkv-t4.pt")


def config(name, image_size=16, in_channels=3, num_classes=10, learn_sigma=True):
    return {"model": name, "image_size": image_size, "in_channels": in_channels,
            "num_classes": num_classes, "learn_sigma": learn_sigma}


def meta_model(cfg):
    with torch.device("meta"):
        return build_model(cfg)


def randomize(model, seed=0):
    """Give the zero-initialised layers random weights so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_every_config_builds_with_its_depth_and_width(name):
    arch = MODEL_CONFIGS[name]
    model = meta_model(config(name, image_size=4 * arch["patch_size"], in_channels=4))
    if arch["family"] == "DRWKV":
        assert len(model.in_blocks) == len(model.out_blocks) == arch["depth"] // 2
        assert 2 * len(model.in_blocks) + 1 == arch["depth"]
        assert model.mid_block.att.key.weight.shape == (arch["hidden_size"], arch["hidden_size"])
    else:
        assert len(model.blocks) == arch["depth"]
        assert model.blocks[0].attn.num_heads == arch["num_heads"]
    assert model.x_embedder.weight.shape == (arch["hidden_size"], 4, arch["patch_size"], arch["patch_size"])


@pytest.mark.parametrize("name", [n for n in MODEL_CONFIGS if n.endswith("/2")] + ["DRWKV-H/4", "DiT-XL/8"])
def test_full_size_forward_shapes_on_meta(name):
    # Meta tensors run the operator's fake (shape-only) kernel: full sizes cost no memory.
    p = MODEL_CONFIGS[name]["patch_size"]
    model = meta_model(config(name, image_size=4 * p, in_channels=4))
    x = torch.empty(2, 4, 4 * p, 4 * p, device="meta")
    out = model(x, torch.empty(2, device="meta"), torch.empty(2, dtype=torch.long, device="meta"))
    assert out.shape == (2, 8, 4 * p, 4 * p)


@pytest.mark.parametrize("name", ["DRWKV-T/2", "DRWKV-XS/4", "DRWKV-S/2", "DRWKV-B/4", "DiT-T/2", "DiT-S/8"])
def test_real_forward_and_backward(name):
    p = MODEL_CONFIGS[name]["patch_size"]
    size = 3 * p  # 3x3 tokens: every Q-Shift direction meets a border and an interior
    model = randomize(build_model(config(name, image_size=size, in_channels=3, learn_sigma=False)))
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.tensor([3, 999]), torch.tensor([1, 10]))
    assert out.shape == (2, 3, size, size)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["DRWKV-T/2", "DiT-T/2"])
def test_fresh_model_outputs_exactly_zero(name):
    model = build_model(config(name))
    out = model(torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999]), torch.tensor([0, 5, 10]))
    assert torch.equal(out, torch.zeros_like(out))
    # Zero comes from adaLN-Zero and the zero head, not from the body: the block modulations are zero.
    gates = [m.adaLN_modulation[-1].weight for m in model.modules() if hasattr(m, "adaLN_modulation")]
    assert len(gates) > 1 and all(torch.equal(g, torch.zeros_like(g)) for g in gates)


def test_q_shift_moves_each_quarter_from_its_neighbour():
    h, w, C = 2, 3, 9  # quarters of 2 channels, 1 channel passes through
    grid = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(h, w)  # [[1,2,3],[4,5,6]]
    x = grid.reshape(1, h * w, 1).repeat(1, 1, C) * torch.arange(1, C + 1)  # channel c scaled by c+1
    out = q_shift(x, h, w).reshape(h, w, C)
    expect = {
        "left": torch.tensor([[0., 1, 2], [0, 4, 5]]),    # value of the left neighbour
        "right": torch.tensor([[2., 3, 0], [5, 6, 0]]),   # value of the right neighbour
        "up": torch.tensor([[0., 0, 0], [1, 2, 3]]),      # value of the upper neighbour
        "down": torch.tensor([[4., 5, 6], [0, 0, 0]]),    # value of the lower neighbour
    }
    for quarter, key in enumerate(["left", "right", "up", "down"]):
        for c in (2 * quarter, 2 * quarter + 1):
            assert torch.equal(out[..., c], expect[key] * (c + 1)), (key, c)
    assert torch.equal(out[..., 8], grid * 9)


def test_int_and_float_timesteps_agree_and_labels_matter():
    model = randomize(build_model(config("DRWKV-T/4")))
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([2, 7])
    a = model(x, torch.tensor([10, 700]), y)
    b = model(x, torch.tensor([10.0, 700.0]), y)
    assert torch.equal(a, b)
    assert not torch.allclose(a, model(x, torch.tensor([10, 700]), torch.tensor([10, 10])))


@pytest.mark.parametrize("chunk_tokens", [1024, 16])
def test_eager_bf16_autocast_runs_and_stays_near_float32(chunk_tokens, monkeypatch):
    # 16: the per-token MLP in chunks, as inference runs it above chunk_tokens tokens.
    from drwkv.model import ChannelMix

    monkeypatch.setattr(ChannelMix, "chunk_tokens", chunk_tokens)
    model = randomize(build_model(config("DRWKV-T/2"))).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0]), torch.tensor([2, 7])
    with torch.inference_mode():
        reference = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - reference).abs().max() / reference.abs().max()).item() < 0.03


def test_drwkv_h2_parameter_count_matches_the_paper():
    # Paper: DRWKV-H/2 on ImageNet 512x512 (64x64x4 latent) has about 779M parameters.
    params = sum(p.numel() for p in meta_model(config("DRWKV-H/2", 64, 4, 1000)).parameters())
    assert abs(params - 779e6) / 779e6 < 0.02, params


def test_dit_xl2_parameter_count_matches_dit():
    # DiT paper: DiT-XL/2 has 675M parameters (256x256 images, 32x32x4 latent).
    params = sum(p.numel() for p in meta_model(config("DiT-XL/2", 32, 4, 1000)).parameters())
    assert abs(params - 675e6) / 675e6 < 0.005, params


def test_unknown_model_and_bad_image_size_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(config("DRWKV-Z/2"))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model(config("DRWKV-T/4", image_size=10))


def _snapshot(directory):
    return {f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(directory))}


def test_bad_checkpoints_give_one_line_value_errors_and_touch_nothing(tmp_path):
    good = tmp_path / "good.pt"
    model = build_model(config("DRWKV-T/4"))
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config("DRWKV-T/4"),
                "ema": model.state_dict(), "step": 0}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint at all\n")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pt")
    torch.save({"format": "drwkv-checkpoint", "version": 99, "config": config("DRWKV-T/4")}, tmp_path / "future.pt")
    wrong = {"format": "drwkv-checkpoint", "version": 1, "config": config("DRWKV-XS/4"), "ema": model.state_dict()}
    torch.save(wrong, tmp_path / "mismatch.pt")
    before = _snapshot(tmp_path)

    cfg, loaded = load_checkpoint(good)
    assert cfg["model"] == "DRWKV-T/4" and not loaded.training
    for name, pattern in [("truncated.pt", "torch.load failed"), ("text.pt", "torch.load failed"),
                          ("foreign.pt", "not a drwkv checkpoint"), ("future.pt", "version 99"),
                          ("mismatch.pt", "do not match")]:
        with pytest.raises(ValueError, match=pattern) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
    assert _snapshot(tmp_path) == before


def test_pretrained_checkpoint_loads_and_runs():
    cfg, model = load_checkpoint(PRETRAINED)
    assert cfg["dataset"] == "fashion-mnist" and len(cfg["class_names"]) == cfg["num_classes"] == 10
    assert os.path.getsize(PRETRAINED) < 20e6
    s = cfg["image_size"]
    with torch.no_grad():
        out = model(torch.randn(2, 1, s, s), torch.tensor([999, 10]), torch.tensor([0, 10]))
    assert out.shape == (2, 2, s, s) and out.abs().sum() > 0


def test_unconditional_model_and_final_norm_are_options():
    model = randomize(build_model({**config("DRWKV-T/2", num_classes=0), "final_norm": True}))
    assert model.y_embedder is None and isinstance(model.final_norm, torch.nn.LayerNorm)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        out = model(x, t, None)
        assert torch.equal(model(x, t, torch.tensor([0, 5])), out)  # no class input: y is ignored
        model.final_norm.weight.mul_(2.0)
        assert not torch.allclose(model(x, t, None), out)           # the LayerNorm acts on the tokens
    # Without the options a model has exactly the parameters it always had (checkpoints load as before).
    plain = build_model(config("DRWKV-T/2")).state_dict()
    assert "y_embedder.weight" in plain and not any(k.startswith("final_norm") for k in plain)
    with pytest.raises(ValueError, match="final_norm is a DRWKV option"):
        build_model({**config("DiT-T/2"), "final_norm": True})
