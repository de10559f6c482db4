"""PyTorch references for bench/run.py: the same per-seed measurement with torch.func and eagerly.

Only imported when ``import torch`` works; torch is never a gradflow dependency. Each reference
draws its own weights from the same distributions as gradflow's init (``nielsen``: W ~ N(0,
1/n_in), b ~ N(0, 1); ``gaussian``: W ~ N(0, sigma_w2/n_in), b ~ N(0, sigma_b2)), so the work
is the same, not the numbers. It returns the per-layer weight and bias gradient norms (2 L
values per seed); gradflow's probe returns those and six more statistics per layer.
``norms_at`` feeds gradflow's own weights through the torch.func path, so run.py can check that
both compute the same gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}


class Reference:
    """One workload: an MLP ``widths``/``activation``, inputs x, targets y and a loss name."""

    def __init__(self, widths, activation, init, x, y, loss, sigma_w2=1.0, sigma_b2=0.0):
        self.widths, self.init = list(widths), init
        self.sigma_w2, self.sigma_b2 = sigma_w2, sigma_b2
        layers = []
        for l in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[l], widths[l + 1]))
            if l < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = torch.nn.Sequential(*layers).to("meta")  # structure only: no weights
        self.names = [name for name, _ in self.net.named_parameters()]
        self.x = torch.as_tensor(np.array(x))  # a writable copy
        y = torch.as_tensor(np.array(y))
        if loss == "sigmoid_xent":  # integer labels -> one-hot targets
            y = torch.nn.functional.one_hot(y.long(), widths[-1]).float()
        self.y, self.loss = y, loss
        self._per_seed = vmap(self._norms, in_dims=(0, None, None))

    def _loss(self, params, x, y):
        out = functional_call(self.net, params, (x,))
        if self.loss == "sigmoid_xent":  # Nielsen's CrossEntropyCost on sigmoid outputs
            c = torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum")
            return c / x.shape[0]
        return 0.5 * torch.sum((out - y) ** 2) / x.shape[0]  # "mse"

    def _norms(self, params, x, y):
        g = grad(self._loss)(params, x, y)
        return torch.stack([g[name].norm() for name in self.names])  # (2 L,)

    def draw(self, n: int, generator) -> dict:
        """Parameters of n seeds, stacked: {"0.weight": (n, n_out, n_in), "0.bias": (n, n_out)}."""
        params = {}
        for l in range(len(self.widths) - 1):
            n_in, n_out = self.widths[l], self.widths[l + 1]
            w_std = math.sqrt((1.0 if self.init == "nielsen" else self.sigma_w2) / n_in)
            b_std = 1.0 if self.init == "nielsen" else math.sqrt(self.sigma_b2)
            params[self.names[2 * l]] = torch.randn(n, n_out, n_in, generator=generator) * w_std
            params[self.names[2 * l + 1]] = torch.randn(n, n_out, generator=generator) * b_std
        return params

    def func(self, n_seeds: int, chunk: int) -> np.ndarray:
        """torch.func: vmap over seeds of grad(loss), chunk seeds at a time, init included."""
        generator = torch.Generator().manual_seed(0)
        out = []
        with torch.no_grad():  # torch.func.grad differentiates regardless
            for start in range(0, n_seeds, chunk):
                params = self.draw(min(chunk, n_seeds - start), generator)
                out.append(self._per_seed(params, self.x, self.y).numpy())
        return np.concatenate(out)

    def eager(self, n_seeds: int) -> np.ndarray:
        """A plain PyTorch loop: draw, forward, backward, norms, one seed at a time."""
        generator = torch.Generator().manual_seed(0)
        out = []
        for _ in range(n_seeds):
            params = {k: v[0].requires_grad_() for k, v in self.draw(1, generator).items()}
            grads = torch.autograd.grad(self._loss(params, self.x, self.y), list(params.values()))
            out.append(torch.stack([g.norm() for g in grads]).numpy())
        return np.stack(out)

    def norms_at(self, gradflow_params) -> np.ndarray:
        """torch.func's (seeds, 2 L) norms at gradflow's weights (a list of per-seed params)."""
        stacked = {}
        for l in range(len(self.widths) - 1):
            w = np.stack([np.asarray(p[l]["w"]).T for p in gradflow_params])  # torch: (out, in)
            stacked[self.names[2 * l]] = torch.as_tensor(w)
            stacked[self.names[2 * l + 1]] = torch.as_tensor(
                np.stack([np.asarray(p[l]["b"]) for p in gradflow_params])
            )
        with torch.no_grad():
            return self._per_seed(stacked, self.x, self.y).numpy()
