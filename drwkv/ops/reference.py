"""The Bi-WKV formula written out directly (O(T^2)): ground truth for tests and a fallback.

    l(t,i) = k[b,i,c] - (|t-i| - 1) * w[c]   (i != t),    l(t,t) = u[c] + k[b,t,c]
    y[b,t,c] = softmax_i(l(t,i)) @ v[b,i,c]

Computed in blocks of target positions so that memory stays O(block * T * C) rather than O(T^2 * C).
"""
import torch


def bi_wkv_reference(w, u, k, v, block=None, targets=None):
    """Exact Bi-WKV in the dtype of the inputs (pass float64 tensors for ground truth).

    Differentiable through plain autograd, so it also gives reference gradients. `targets`
    (a range of positions) limits the output to those rows, e.g. to time a slice of a long input.
    """
    B, T, C = k.shape
    targets = range(T) if targets is None else targets
    dtype = torch.promote_types(k.dtype, w.dtype)
    w, u, k, v = (x.to(dtype) for x in (w, u, k, v))
    if block is None:
        # Keep each block's [B, block, T, C] logits around 16M elements.
        block = max(1, min(T, (1 << 24) // max(1, B * T * C)))
    pos = torch.arange(T, device=k.device)
    out = []
    for start in range(targets.start, targets.stop, block):
        t = pos[start:min(start + block, targets.stop)]
        dist = (t[:, None] - pos[None, :]).abs()                       # [tb, T]
        decay = (dist - 1).to(dtype)[None, :, :, None] * w             # [1, tb, T, C]
        logits = k[:, None, :, :] - decay                              # [B, tb, T, C]
        self_logit = (u + k[:, t])[:, :, None, :]    # [B, tb, 1, C]
        is_self = (dist == 0)[None, :, :, None]
        logits = torch.where(is_self, self_logit, logits)
        weights = torch.softmax(logits, dim=2)
        out.append((weights * v[:, None, :, :]).sum(dim=2))
    return torch.cat(out, dim=1)
