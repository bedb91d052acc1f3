"""Affine coupling layers (RealNVP), plain and conditional."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_hidden_dims, check_positive_int
from ..nn.dense import ConditionalDenseNN, DenseNN, default_hidden_dims
from .base import (
    ConditionalFlowTransform,
    FlowTransform,
    bounded_log_scale,
    broadcast_context,
    check_log_scale_bound,
)
from .cache import Deferred

__all__ = [
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "affine_coupling",
    "conditional_affine_coupling",
    "coupling_mask",
    "soft_log_scale",
]

#: Where the affine map :math:`x_B \odot e^s + t` acts: towards the data or towards the noise.
DIRECTIONS = ("sample", "density")
#: How the log-scale bound is applied: :func:`~pyro_flows.transforms.base.bounded_log_scale`
#: or :func:`soft_log_scale`.
LOG_SCALE_CLAMPS = ("tanh", "soft")


def soft_log_scale(raw: Tensor, bound: float) -> Tensor:
    r"""Maps a raw output to a log-scale in :math:`(-b, b)` with a rational soft clamp.

    .. math:: s = \frac{r}{1 + |r| / b}

    The identity near 0 like :math:`b \tanh(r / b)`, but its slope
    :math:`(1 + |r| / b)^{-2}` falls off from the start (at :math:`r = b/2` it is 0.44 where
    tanh's is 0.79) and it approaches the bound only as :math:`b - b^2 / |r|`, so large raw
    outputs move the log-scale less and never stop moving it. With :math:`b = \ln 10^3`
    (:data:`SOFT_LOG_SCALE_BOUND`), the bound on a layer's scale is
    :math:`[10^{-3}, 10^3]`.

    Example:
        >>> soft_log_scale(torch.tensor([0.0, 1.0, 1e6]), 2.0)
        tensor([0.0000, 0.6667, 2.0000])
    """
    return raw / (1 + raw.abs() / bound)


#: The bound of :func:`soft_log_scale` used by the density defaults: scales in [1e-3, 1e3].
SOFT_LOG_SCALE_BOUND = 6.907755278982137


def coupling_mask(
    input_dim: int,
    mask: str | Sequence[bool] | Tensor = "half",
    flip: bool = False,
    conditional: bool = False,
) -> Tensor:
    r"""Returns a boolean mask of length ``input_dim``; True marks the features left unchanged.

    Arguments:
        input_dim: The event size :math:`D \ge 2` (:math:`D \ge 1` when ``conditional``).
        mask: ``"half"`` (the first :math:`\lfloor D/2 \rfloor` features condition the rest),
            ``"alternate"`` (even-indexed features condition the odd ones), or a custom boolean
            sequence with at least one True and one False.
        flip: Swap the roles of the two groups.
        conditional: The layer also sees a context, so it may transform every feature (a mask
            of all False), its shift and log-scale then coming from the context alone: the
            ``"half"`` mask of :math:`D = 1`.
    """
    check_positive_int(input_dim, "input_dim", minimum=1 if conditional else 2)
    if isinstance(mask, str):
        check_choice(mask, ("half", "alternate"), "mask")
        idx = torch.arange(input_dim)
        m = idx < input_dim // 2 if mask == "half" else idx % 2 == 0
    else:
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool or m.shape != (input_dim,):
            raise ValueError(
                f"mask must be 'half', 'alternate' or a boolean tensor of shape ({input_dim},), "
                f"got {mask!r}"
            )
    if flip:
        m = ~m
    if not conditional and (m.all() or not m.any()):
        raise ValueError("mask must leave at least one feature unchanged and transform another")
    if m.all():
        raise ValueError("mask must transform at least one feature (mark it False)")
    return m


class AffineCoupling(FlowTransform):
    r"""Affine coupling layer of RealNVP.

    With :math:`x_A` the features selected by the mask and :math:`x_B` the others (:math:`x` on
    the noise side, :math:`y` on the data side), ``direction="sample"`` (RealNVP's and Pyro's
    form) is

    .. math:: y_A = x_A, \qquad y_B = x_B \odot e^{s(x_A)} + t(x_A), \qquad
              \log|\det J| = \textstyle\sum_i s_i(x_A),

    and ``direction="density"`` puts the same affine map on the way from data to noise (the
    form of MAF and of zuko's coupling), :math:`x_B = y_B \odot e^{s(y_A)} + t(y_A)`, so
    :math:`\log|\det J| = -\sum_i s_i`. Both give the same family of maps; they differ in how
    the shift and the scale enter the gradient, which matters in training (docs/benchmarks.md,
    affine coupling). The log-scale is bounded smoothly, so that no layer can blow up or
    collapse a direction: ``log_scale_clamp="tanh"`` gives :math:`s = b \tanh(\tilde s / b)`,
    ``"soft"`` gives :math:`s = \tilde s / (1 + |\tilde s| / b)`, which saturates more slowly
    and damps large raw outputs more. Both directions and the log-determinant cost one network
    pass.

    Arguments:
        input_dim: The event size :math:`D \ge 2` (:math:`D \ge 1` with a context).
        mask: A boolean tensor of shape ``(D,)``; True marks :math:`x_A` (with a context,
            :math:`x_A` may be empty).
        conditioner: A module mapping :math:`x_A` (and the context, when ``context`` is given)
            to the pair :math:`(t, \tilde s)`, each of size :math:`|B|`.
        log_scale_bound: The bound :math:`b` of the log-scale, or None for no bound.
        context: A context passed to ``conditioner`` (set by
            :meth:`ConditionalAffineCoupling.condition`).
        direction: ``"sample"`` or ``"density"``: the side on which :math:`x_B \odot e^s + t`
            is applied (see above).
        log_scale_clamp: ``"tanh"`` or ``"soft"``: how the bound :math:`b` is applied.

    Example:
        >>> t = affine_coupling(4, hidden_dims=[16], direction="density", identity_init=False)
        >>> x = torch.randn(10, 4)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-6)
        True

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(
        self,
        input_dim: int,
        mask: Tensor,
        conditioner: nn.Module,
        log_scale_bound: float | None = 5.0,
        context: Tensor | None = None,
        cache_size: int = 1,
        direction: str = "sample",
        log_scale_clamp: str = "tanh",
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        mask = coupling_mask(input_dim, mask, conditional=context is not None)
        self.conditioner = conditioner
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)
        self.context = context
        self.direction = check_choice(direction, DIRECTIONS, "direction")
        self.log_scale_clamp = check_choice(log_scale_clamp, LOG_SCALE_CLAMPS, "log_scale_clamp")
        idx = torch.arange(input_dim)
        self.register_buffer("mask", mask)
        self.register_buffer("idx_a", idx[mask])
        self.register_buffer("idx_b", idx[~mask])
        self.register_buffer("unsplit", torch.argsort(torch.cat([idx[mask], idx[~mask]])))

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        if self.context is None:
            shift, raw = self.conditioner(x_a)
        else:
            x_a, context = broadcast_context(x_a, self.context)
            shift, raw = self.conditioner(x_a, context)
        if self.log_scale_clamp == "soft" and self.log_scale_bound is not None:
            return shift, soft_log_scale(raw, self.log_scale_bound)
        return shift, bounded_log_scale(raw, self.log_scale_bound)

    def _forward_ladj(self, log_scale: Tensor) -> Tensor:
        # the noise-to-data log-determinant: +sum(s) when the affine acts towards the data
        ladj = log_scale.sum(-1)
        return ladj if self.direction == "sample" else -ladj

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Deferred]:
        x_a, x_b = x[..., self.idx_a], x[..., self.idx_b]
        shift, log_scale = self._shift_and_log_scale(x_a)
        if self.direction == "sample":
            y_b = x_b * log_scale.exp() + shift
        else:
            y_b = (x_b - shift) * torch.exp(-log_scale)
        x_a = x_a.expand(y_b.shape[:-1] + x_a.shape[-1:])
        return torch.cat([x_a, y_b], dim=-1)[..., self.unsplit], Deferred(
            lambda: self._forward_ladj(log_scale)
        )

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y_a, y_b = y[..., self.idx_a], y[..., self.idx_b]
        shift, log_scale = self._shift_and_log_scale(y_a)
        if self.direction == "sample":
            x_b = (y_b - shift) * torch.exp(-log_scale)
        else:
            x_b = y_b * log_scale.exp() + shift
        y_a = y_a.expand(x_b.shape[:-1] + y_a.shape[-1:])
        return torch.cat([y_a, x_b], dim=-1)[..., self.unsplit], self._forward_ladj(log_scale)

    def _ladj(self, x: Tensor, y: Tensor) -> Tensor:
        return self._forward_ladj(self._shift_and_log_scale(x[..., self.idx_a])[1])


class ConditionalAffineCoupling(ConditionalFlowTransform):
    r"""Affine coupling layer whose shift and log-scale also see a context :math:`c`.

    .. math:: y_A = x_A, \qquad y_B = x_B \odot e^{s(x_A, c)} + t(x_A, c)

    ``.condition(c)`` returns an :class:`AffineCoupling` sharing this module's parameters.
    A mask may transform every feature (:math:`A` empty): the layer is then the affine map
    :math:`y = x \odot e^{s(c)} + t(c)`, as the default mask makes it for :math:`D = 1`.

    Arguments:
        input_dim: The event size :math:`D \ge 1`.
        context_dim: The context size :math:`C`.
        mask: A boolean tensor of shape ``(D,)``; True marks the unchanged features.
        conditioner: A module mapping ``(x_A, context)`` to :math:`(t, \tilde s)`.
        log_scale_bound: The bound of the log-scale, or None.
        direction: ``"sample"`` or ``"density"`` (see :class:`AffineCoupling`).
        log_scale_clamp: ``"tanh"`` or ``"soft"`` (see :class:`AffineCoupling`).

    Example:
        >>> t = conditional_affine_coupling(4, 3, hidden_dims=[16])
        >>> t.condition(torch.randn(3))(torch.randn(10, 4)).shape
        torch.Size([10, 4])

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        mask: Tensor,
        conditioner: nn.Module,
        log_scale_bound: float | None = 5.0,
        direction: str = "sample",
        log_scale_clamp: str = "tanh",
    ) -> None:
        super().__init__(input_dim, context_dim)
        self.register_buffer("mask", coupling_mask(input_dim, mask, conditional=True))
        self.conditioner = conditioner
        self.log_scale_bound = check_log_scale_bound(log_scale_bound)
        self.direction = check_choice(direction, DIRECTIONS, "direction")
        self.log_scale_clamp = check_choice(log_scale_clamp, LOG_SCALE_CLAMPS, "log_scale_clamp")

    def _condition(self, context: Tensor) -> AffineCoupling:
        return AffineCoupling(
            self.input_dim,
            self.mask,
            self.conditioner,
            self.log_scale_bound,
            context=context,
            direction=self.direction,
            log_scale_clamp=self.log_scale_clamp,
        )


def _start(net: nn.Module, identity_init: bool) -> nn.Module:
    # identity_init: start the layer at the identity map (as Glow and RealNVP implementations
    # do) by zeroing the last layer; else keep torch's default init of every layer.
    if not isinstance(identity_init, bool):
        raise TypeError(f"identity_init must be True or False, got {identity_init!r}")
    if identity_init:
        last = net.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return net


def affine_coupling(
    input_dim: int,
    hidden_dims: Sequence[int] | None = None,
    mask: str | Sequence[bool] | Tensor = "half",
    flip: bool = False,
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
    *,
    direction: str = "sample",
    log_scale_clamp: str = "tanh",
    identity_init: bool = True,
) -> AffineCoupling:
    r"""Builds an :class:`AffineCoupling` with a dense conditioner (:class:`pyro_flows.nn.DenseNN`).

    Arguments:
        input_dim: The event size :math:`D \ge 2`.
        hidden_dims: Hidden layer sizes of the conditioner (default
            :func:`~pyro_flows.nn.dense.default_hidden_dims`: 64-64 below 10 dimensions,
            128-128 up to 32, :math:`4D`-:math:`4D` beyond).
        mask: ``"half"``, ``"alternate"`` or a custom boolean mask (see :func:`coupling_mask`).
        flip: Swap which features are transformed.
        log_scale_bound: The bound of the log-scale, or None.
        residual: Residual hidden layers (all of one width): :math:`h \leftarrow h + W f(h) + b`.
        direction: ``"sample"`` or ``"density"`` (see :class:`AffineCoupling`).
        log_scale_clamp: ``"tanh"`` or ``"soft"`` (see :class:`AffineCoupling`).
        identity_init: Zero the conditioner's last layer, so the layer starts at the identity
            (the start a variational guide wants); False keeps torch's random init of it.
    """
    m = coupling_mask(input_dim, mask, flip)
    hidden = check_hidden_dims(hidden_dims or default_hidden_dims(input_dim))
    n_a = int(m.sum())
    net = DenseNN(n_a, hidden, param_dims=[input_dim - n_a, input_dim - n_a], residual=residual)
    return AffineCoupling(
        input_dim,
        m,
        _start(net, identity_init),
        log_scale_bound,
        direction=direction,
        log_scale_clamp=log_scale_clamp,
    )


def conditional_affine_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] | None = None,
    mask: str | Sequence[bool] | Tensor = "half",
    flip: bool = False,
    log_scale_bound: float | None = 5.0,
    residual: bool = False,
    *,
    direction: str = "sample",
    log_scale_clamp: str = "tanh",
    identity_init: bool = True,
) -> ConditionalAffineCoupling:
    r"""Builds a :class:`ConditionalAffineCoupling` (conditioner :class:`pyro_flows.nn.ConditionalDenseNN`).

    Arguments:
        input_dim: The event size :math:`D \ge 1` (for :math:`D = 1` the ``"half"`` mask
            transforms the one feature, from the context alone).
        context_dim: The context size :math:`C`.
        hidden_dims: Hidden layer sizes (default ``default_hidden_dims(D, C)``).
        mask: ``"half"``, ``"alternate"`` or a custom boolean mask.
        flip: Swap which features are transformed.
        log_scale_bound: The bound of the log-scale, or None.
        residual: Residual hidden layers (all of one width): :math:`h \leftarrow h + W f(h) + b`.
        direction: ``"sample"`` or ``"density"`` (see :class:`AffineCoupling`).
        log_scale_clamp: ``"tanh"`` or ``"soft"`` (see :class:`AffineCoupling`).
        identity_init: Zero the conditioner's last layer, so the layer starts at the identity
            (the start a variational guide wants); False keeps torch's random init of it.
    """
    m = coupling_mask(input_dim, mask, flip, conditional=True)
    check_positive_int(context_dim, "context_dim")
    hidden = check_hidden_dims(hidden_dims or default_hidden_dims(input_dim, context_dim))
    n_a = int(m.sum())
    net = ConditionalDenseNN(
        n_a, context_dim, hidden, param_dims=[input_dim - n_a, input_dim - n_a], residual=residual
    )
    return ConditionalAffineCoupling(
        input_dim,
        context_dim,
        m,
        _start(net, identity_init),
        log_scale_bound,
        direction=direction,
        log_scale_clamp=log_scale_clamp,
    )
