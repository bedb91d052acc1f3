"""The closed-form flow-matching field from N(0, I) to N(mu, s^2 I) on the sigma_min = 0 path."""

import math

import torch
from torch import nn


class GaussianField(nn.Module):
    """u_t(x) = mu + (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2) (x - t mu); mu may depend on c."""

    def __init__(self, mu, s, conditional=False):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.get_default_dtype()))
        self.s = float(s)
        self.input_dim = self.mu.shape[-1]
        self.conditional = conditional

    def forward(self, t, x, context=None):
        if not torch.is_tensor(t):
            t = torch.tensor(float(t))
        t = t.to(x.dtype)
        if t.dim() > 0:
            t = t.unsqueeze(-1)
        mu = context if self.conditional else self.mu
        s2 = self.s**2
        gain = (t * s2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s2)
        return mu + gain * (x - t * mu)


def minimum(dim, s):
    return dim * s * math.pi / 2
