"""PyTorch peer for the transformer workload: the same pre-LN architecture as
``gradflow.transformer`` (token embedding, learned positions, blocks x + MHA(LN(x)) and
x + FFN(LN(x)), final LN, mean pool, dense readout), per-seed parameter-gradient norms by
``torch.func.vmap(torch.func.grad(...))`` over a chunk of seeds. Only imported when PyTorch is
installed (``.venv/bin/pip install torch``); never a dependency.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap


class TransformerReference:
    def __init__(self, depth, width, heads, seq, vocab, n_out, x, y, ffn_mult=4):
        self.depth, self.width, self.heads, self.seq = depth, width, heads, seq
        self.vocab, self.n_out, self.ffn = vocab, n_out, ffn_mult * width
        self.x = torch.as_tensor(np.array(x), dtype=torch.long)
        self.y = torch.as_tensor(np.array(y), dtype=torch.long)
        torch.set_num_threads(torch.get_num_threads())

    def draw(self, n: int, generator) -> dict[str, torch.Tensor]:
        """Parameters of n seeds, stacked on a leading axis (inits as gradflow's)."""
        d, f, L = self.width, self.ffn, self.depth
        r = lambda *shape, std: torch.randn(n, *shape, generator=generator) * std  # noqa: E731
        return {
            "embed": r(self.vocab, d, std=1.0),
            "pos": r(self.seq, d, std=0.02),
            "wqkvo": r(L, 4, d, d, std=1 / math.sqrt(d)),
            "ln1": torch.ones(n, L, 2, d) * torch.tensor([1.0, 0.0])[:, None],
            "ln2": torch.ones(n, L, 2, d) * torch.tensor([1.0, 0.0])[:, None],
            "w1": r(L, d, f, std=1 / math.sqrt(d)),
            "b1": torch.zeros(n, L, f),
            "w2": r(L, f, d, std=1 / math.sqrt(f)),
            "b2": torch.zeros(n, L, d),
            "lnf": torch.ones(n, 2, d) * torch.tensor([1.0, 0.0])[:, None],
            "wout": r(d, self.n_out, std=1 / math.sqrt(d)),
            "bout": torch.zeros(n, self.n_out),
        }

    def _loss(self, p, x, y):
        d, h = self.width, self.heads
        a = p["embed"][x] + p["pos"][None]
        b, t = x.shape
        for l in range(self.depth):
            z = F.layer_norm(a, (d,), p["ln1"][l, 0], p["ln1"][l, 1], 1e-5)
            q, k, v = (
                (z @ p["wqkvo"][l, i]).reshape(b, t, h, d // h).transpose(1, 2) for i in range(3)
            )
            # Written out: torch.func has no batching rule for the fused CPU attention kernel
            # (it falls back to a per-seed loop, ~1.2x slower here).
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1) @ v
            a = a + att.transpose(1, 2).reshape(b, t, d) @ p["wqkvo"][l, 3]
            z = F.layer_norm(a, (d,), p["ln2"][l, 0], p["ln2"][l, 1], 1e-5)
            a = a + F.relu(z @ p["w1"][l] + p["b1"][l]) @ p["w2"][l] + p["b2"][l]
        a = F.layer_norm(a, (d,), p["lnf"][0], p["lnf"][1], 1e-5).mean(1)
        return F.cross_entropy(a @ p["wout"] + p["bout"], y)

    def _per_seed(self, params):
        grads = vmap(grad(self._loss), in_dims=(0, None, None))(params, self.x, self.y)
        return torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1)

    def func(self, n_seeds: int, chunk: int) -> np.ndarray:
        """torch.func: chunks of vmapped seeds, parameters drawn per chunk (init included)."""
        generator = torch.Generator().manual_seed(0)
        out = []
        for start in range(0, n_seeds, chunk):
            params = self.draw(min(chunk, n_seeds - start), generator)
            out.append(self._per_seed(params).numpy())
        return np.concatenate(out)
