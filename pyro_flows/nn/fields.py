"""Time-dependent vector fields :math:`f(t, x[, c])` for continuous flows (FFJORD, flow matching)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_hidden_dims, check_positive_int

__all__ = [
    "ACTIVATIONS",
    "ConcatSquashLinear",
    "VectorField",
]

#: Smooth activations a vector field may use (a field must be differentiable twice for training
#: through its divergence).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


class ConcatSquashLinear(nn.Module):
    r"""A linear layer whose output is gated and shifted by a conditioning vector :math:`c`.

    .. math:: y = (W x + b) \odot \sigma(G c + g) + H c

    With :math:`c = t` (or :math:`c = (t, \text{context})`), this is the time-dependent layer
    of FFJORD: the time scales and shifts every hidden unit.

    Arguments:
        in_features: The size of :math:`x`.
        out_features: The size of :math:`y`.
        cond_features: The size of :math:`c`.

    Example:
        >>> layer = ConcatSquashLinear(3, 8, 1)
        >>> layer(torch.randn(5, 3), torch.rand(5, 1)).shape
        torch.Size([5, 8])

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
          (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """

    def __init__(self, in_features: int, out_features: int, cond_features: int) -> None:
        super().__init__()
        check_positive_int(in_features, "in_features")
        check_positive_int(out_features, "out_features")
        check_positive_int(cond_features, "cond_features")
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(cond_features, out_features)
        self.shift = nn.Linear(cond_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """Draws new weights (torch's default initialisation of :class:`torch.nn.Linear`)."""
        for layer in (self.linear, self.gate, self.shift):
            layer.reset_parameters()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Maps ``x`` of shape ``(*batch, in_features)`` given ``cond`` of shape ``(*batch, cond_features)``."""
        return self.linear(x) * torch.sigmoid(self.gate(cond)) + self.shift(cond)


class VectorField(nn.Module):
    r"""A multilayer perceptron :math:`f(t, x)` (or :math:`f(t, x, c)`) from and to :math:`\mathbb{R}^D`.

    The time enters as :math:`\tau(t) = t` or, with ``time_freqs`` :math:`= K > 0`, as the
    Fourier features :math:`\tau(t) = (\cos k\pi t, \sin k\pi t)_{k=1}^K`; a context
    :math:`c`, if any, is appended to it. With ``concat_squash=True`` every layer is a
    :class:`ConcatSquashLinear` conditioned on :math:`(\tau(t), c)`; otherwise
    :math:`(x, \tau(t), c)` is the input of a plain MLP.

    Rows of a batch are mapped independently, so the Jacobian :math:`\partial f/\partial x`
    is block diagonal and divergences are per row.

    Arguments:
        input_dim: The size :math:`D` of :math:`x` and of the output.
        hidden_dims: The hidden layer sizes.
        context_dim: The size :math:`C` of a context, or None for an unconditional field.
        activation: One of :data:`ACTIVATIONS` (``"tanh"``, ``"softplus"``, ``"elu"``,
            ``"silu"``).
        time_freqs: The number :math:`K` of Fourier frequencies of the time, or 0 for
            :math:`t` itself.
        concat_squash: Condition every layer on the time (and context), or only the input.

    Example:
        >>> f = VectorField(2, [32, 32])
        >>> f(torch.tensor(0.5), torch.randn(10, 2)).shape
        torch.Size([10, 2])
        >>> g = VectorField(2, [32], context_dim=3, time_freqs=4, concat_squash=False)
        >>> g(torch.rand(10), torch.randn(10, 2), torch.randn(3)).shape  # one time per row
        torch.Size([10, 2])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        context_dim: int | None = None,
        *,
        activation: str = "tanh",
        time_freqs: int = 0,
        concat_squash: bool = True,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        hidden = check_hidden_dims(hidden_dims)
        if context_dim is not None:
            check_positive_int(context_dim, "context_dim")
        self.context_dim = context_dim
        check_choice(activation, tuple(ACTIVATIONS), "activation")
        self.activation = activation
        self.time_freqs = check_positive_int(time_freqs, "time_freqs", minimum=0)
        self.concat_squash = bool(concat_squash)
        time_dim = 2 * time_freqs if time_freqs else 1
        cond_dim = time_dim + (context_dim or 0)
        sizes = [input_dim, *hidden, input_dim]
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        if self.concat_squash:
            self.layers = nn.ModuleList(ConcatSquashLinear(a, b, cond_dim) for a, b in pairs)
        else:
            pairs[0] = (input_dim + cond_dim, pairs[0][1])
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.act = ACTIVATIONS[activation]()
        freqs = math.pi * torch.arange(1, time_freqs + 1, dtype=torch.get_default_dtype())
        self.register_buffer("freqs", freqs)

    def reset_parameters(self) -> None:
        """Draws new weights for every layer (torch's default initialisation)."""
        for layer in self.layers:
            layer.reset_parameters()

    def time_features(self, t: Tensor, batch: torch.Size) -> Tensor:
        r"""Returns :math:`\tau(t)` of shape ``(*batch, 1)`` or ``(*batch, 2K)``."""
        t = t.unsqueeze(-1).expand(*batch, 1)
        if not self.time_freqs:
            return t
        angle = t * self.freqs.to(t.dtype)
        return torch.cat([angle.cos(), angle.sin()], dim=-1)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`f(t, x[, c])` of shape ``(*batch, D)``.

        Arguments:
            t: The time: a scalar tensor, or one time per row of shape ``batch`` (or
                ``(*batch, 1)``).
            x: The points, shape ``(*batch, D)``.
            context: The context, shape ``(*batch, C)`` (broadcast against ``x``), for a
                conditional field.
        """
        if not isinstance(t, Tensor):
            t = x.new_tensor(float(t))
        if t.dim() == x.dim() and t.dim() > 0 and t.shape[-1] == 1:
            t = t.squeeze(-1)
        # The conditioning vector keeps the batch shape of (t, context) only: with one time for
        # the whole batch, the gates of a concat-squash layer are computed once, not per row.
        cond_batch = t.shape
        if self.context_dim is not None:
            if context is None:
                raise ValueError(
                    f"this field is conditional: pass a context of shape (..., {self.context_dim})"
                )
            cond_batch = torch.broadcast_shapes(cond_batch, context.shape[:-1])
            cond = torch.cat(
                [
                    self.time_features(t, cond_batch),
                    context.expand(*cond_batch, self.context_dim),
                ],
                dim=-1,
            )
        elif context is not None:
            raise ValueError("context was given but this field has no context_dim")
        else:
            cond = self.time_features(t, cond_batch)
        batch = torch.broadcast_shapes(x.shape[:-1], cond_batch)
        h = x.expand(*batch, self.input_dim)
        last = len(self.layers) - 1
        if not self.concat_squash:
            h = torch.cat([h, cond.expand(*batch, cond.shape[-1])], dim=-1)
        for i, layer in enumerate(self.layers):
            h = layer(h, cond) if self.concat_squash else layer(h)
            if i < last:
                h = self.act(h)
        return h
