import torch
import torch.distributed as dist

from test_training import losses, run_train


def test_two_process_ddp_matches_one_process(tmp_path):
    # Same global batch of 8: one process with two micro-batches of 4 (gradient accumulation)
    # versus two gloo ranks with 4 examples each.
    assert dist.is_available() and dist.is_gloo_available()
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_train(single, "--steps", "4", "--grad-accum", "2")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    run_train(ddp, "--steps", "4", launcher=launcher)
    for (s1, l1), (s2, l2) in zip(losses(single), losses(ddp), strict=True):
        assert s1 == s2 and abs(l1 - l2) < 1e-5 * max(1.0, abs(l1))
    a = torch.load(single / "ckpt.pt", weights_only=True)
    b = torch.load(ddp / "ckpt.pt", weights_only=True)
    assert b["args"]["grad_accum"] == 1 and a["args"]["grad_accum"] == 2
    for key in ("model", "ema"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=1e-4, atol=1e-6, msg=f"{key}.{name}")
    # Only rank 0 writes: one metrics line per step.
    assert len(losses(ddp)) == 4
