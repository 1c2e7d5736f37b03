"""K independent MLPs trained in lockstep as one batched computation.

The drills train ~10 small models with the same batch size and epoch count. One at a time,
Python overhead dominates (~2.5 ms/step on 2 cores); stacked along a leading K axis, every
layer is a single ``bmm`` and K models cost little more than one. The models share nothing:
each has its own initialisation, data order, learning rate and gradient clipping, and since
the parameters are disjoint the gradient of the summed loss is each model's own gradient.
"""
from __future__ import annotations

import math

import torch


class StackedMLP(torch.nn.Module):
    """K copies of in -> hidden -> hidden -> out with ReLU; x: (K, B, in) -> (K, B, out)."""

    def __init__(self, k: int, in_dim: int, out_dim: int, hidden: int = 256, seeds=None):
        super().__init__()
        dims = [(in_dim, hidden), (hidden, hidden), (hidden, out_dim)]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        gens = [torch.Generator().manual_seed(int(s)) for s in (seeds if seeds is not None else range(k))]
        for fan_in, fan_out in dims:
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init
            w = torch.stack([(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound for g in gens])
            b = torch.stack([(torch.rand(1, fan_out, generator=g) * 2 - 1) * bound for g in gens])
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)  # (K, B, fan_out)
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x


class StackedAdam:
    """Adam with a learning rate and an optional max grad norm per model (leading axis)."""

    def __init__(self, params, lr: torch.Tensor, clip: torch.Tensor, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.lr, self.clip = lr, clip  # (K,), (K,) with inf = no clipping
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """(K,) total gradient norm of each model."""
        return torch.sqrt(sum((p.grad.reshape(len(self.lr), -1) ** 2).sum(1) for p in self.params))

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Clip each model's gradient to its own max norm, update; returns pre-clip norms (K,)."""
        norms = self.grad_norms()
        scale = torch.clamp(self.clip / (norms + 1e-6), max=1.0)
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad * scale.view(shape)
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.sub_(self.lr.view(shape) * (m / c1) / (torch.sqrt(v / c2) + self.eps))
            p.grad = None
        return norms
