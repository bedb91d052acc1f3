"""Lipschitz-constrained layers and networks, the residual branch of invertible ResNets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._validation import (
    check_choice,
    check_hidden_dims,
    check_positive_float,
    check_positive_int,
)

__all__ = [
    "LIPSCHITZ_ACTIVATIONS",
    "Linearization",
    "LipschitzConv2d",
    "LipschitzConvNet",
    "LipschitzELU",
    "LipschitzLinear",
    "LipschitzMLP",
    "LipschitzNetwork",
    "LipschitzNorm",
    "LipSwish",
    "lipschitz_norm",
]


def _check_input_shape(input_shape: Sequence[int], name: str = "input_shape") -> tuple[int, ...]:
    if isinstance(input_shape, int) or not isinstance(input_shape, Sequence):
        raise ValueError(
            f"{name} must be a sequence (C, H, W) of positive integers, got {input_shape!r}"
        )
    if len(input_shape) != 3:
        raise ValueError(f"{name} must have 3 entries (C, H, W), got {tuple(input_shape)}")
    for s in input_shape:
        check_positive_int(s, f"every entry of {name}")
    return tuple(input_shape)


def _normalize(t: Tensor) -> tuple[Tensor, Tensor]:
    """Returns ``t / ||t||`` (Frobenius norm over all entries) and ``||t||``."""
    norm = torch.linalg.vector_norm(t)
    return t / norm.clamp_min(torch.finfo(t.dtype).tiny), norm


# -- spectral normalisation -------------------------------------------------------------------


class LipschitzNorm(nn.Module):
    r"""Spectral normalisation that rescales a weight only when its spectral norm exceeds :math:`c`.

    A parametrization (see :mod:`torch.nn.utils.parametrize`) mapping a raw weight :math:`W` to

    .. math:: \tilde W = \frac{W}{\max\big(1, \hat\sigma(W) / c\big)}, \qquad
              \hat\sigma(W) = u^\top W v \approx \|W\|_2,

    so that :math:`\|\tilde W\|_2 \le c` while a weight already inside the ball is left
    untouched (i-ResNet's normalisation; :func:`torch.nn.utils.parametrizations.spectral_norm`
    always divides by :math:`\sigma`). The top singular vectors :math:`u, v` are buffers, found
    by power iteration and kept from one call to the next: whenever the raw weight has changed
    (an optimizer step, ``load_state_dict``, ``.to()``, detected by its version counter),
    the iteration restarts from the stored vectors and runs until :math:`\hat\sigma` changes
    by less than ``rtol`` (relative) or ``max_iterations`` is reached; a few iterations per
    training step after the first. Between changes, the same normalised weight is returned,
    so repeated calls (e.g. the fixed-point iterations of an inverse) see one function. The
    gradient flows through :math:`\hat\sigma` as in torch's spectral norm.

    The iteration runs on a block of ``n_vectors`` orthonormal vectors (subspace iteration,
    with the top singular pair taken from the small projected matrix; ``n_vectors=1`` is
    plain power iteration). Plain power iteration converges like
    :math:`(\sigma_2/\sigma_1)^{2k}`: when the top two singular values are close and an
    optimizer step rotates their vectors, tens of iterations leave :math:`\hat\sigma` a
    fraction of a percent low; the block converges like :math:`(\sigma_{m+1}/\sigma_1)^{2k}`
    with :math:`m` = ``n_vectors``, for :math:`m` matrix products and a QR of :math:`m`
    columns per iteration.

    For a weight of a 2-D convolution, the operator norm of the convolution itself (not of
    the reshaped kernel, which does not bound it) is estimated, with power iterations of
    ``conv2d`` and ``conv_transpose2d`` on inputs of shape ``input_shape``; stride 1, odd
    square kernels and "same" zero padding only.

    Power iteration approaches :math:`\|W\|_2` from below, so the bound holds up to the
    tolerance of the iteration (about ``rtol`` relative once the top singular value is
    separated).

    Arguments:
        weight: The raw weight, to read its shape, dtype and device: ``(out, in)`` for a
            linear map, ``(out, in, k, k)`` for a convolution.
        coeff: The bound :math:`c > 0` on the spectral norm.
        input_shape: The input shape ``(C, H, W)`` of a convolution (required for 4-D weights).
        max_iterations: The cap on power iterations after each change of the raw weight.
        rtol: The relative change of :math:`\hat\sigma` below which the iteration stops.
        n_vectors: The size of the block of the subspace iteration.

    Example:
        >>> layer = torch.nn.Linear(5, 5)
        >>> with torch.no_grad():
        ...     _ = layer.weight.mul_(10.0)
        >>> _ = lipschitz_norm(layer, coeff=0.9)
        >>> round(torch.linalg.matrix_norm(layer.weight, ord=2).item(), 3)
        0.9

    References:
        | Invertible Residual Networks (Behrmann et al., 2019)
        | https://arxiv.org/abs/1811.00995
        | Spectral Normalization for Generative Adversarial Networks (Miyato et al., 2018)
        | https://arxiv.org/abs/1802.05957
    """

    def __init__(
        self,
        weight: Tensor,
        coeff: float = 0.9,
        *,
        input_shape: Sequence[int] | None = None,
        max_iterations: int = 50,
        rtol: float = 1e-6,
        n_vectors: int = 4,
    ) -> None:
        super().__init__()
        self.coeff = check_positive_float(coeff, "coeff")
        self.max_iterations = check_positive_int(max_iterations, "max_iterations")
        self.rtol = check_positive_float(rtol, "rtol")
        if weight.dim() == 2:
            if input_shape is not None:
                raise ValueError("input_shape is only for convolution weights; drop it")
            self.input_shape = None
            self.padding = 0
            u_shape, v_shape = weight.shape[:1], weight.shape[1:]
        elif weight.dim() == 4:
            if input_shape is None:
                raise ValueError("input_shape (C, H, W) is required for a convolution weight")
            c, h, w = _check_input_shape(input_shape)
            k = weight.shape[-1]
            if weight.shape[-2] != k or k % 2 == 0:
                raise ValueError(
                    f"only odd square kernels are supported, got {tuple(weight.shape[-2:])}"
                )
            if weight.shape[1] != c:
                raise ValueError(
                    f"input_shape has {c} channels but the weight expects {weight.shape[1]}"
                )
            self.input_shape = (c, h, w)
            self.padding = k // 2
            u_shape, v_shape = (1, weight.shape[0], h, w), (1, c, h, w)
        else:
            raise ValueError(
                f"weight must be 2-D (linear) or 4-D (conv2d), got shape {tuple(weight.shape)}"
            )
        check_positive_int(n_vectors, "n_vectors")
        self.n_vectors = min(n_vectors, math.prod(u_shape), math.prod(v_shape))
        opts = {"dtype": weight.dtype, "device": weight.device}
        self.register_buffer("u", _normalize(torch.randn(u_shape, **opts))[0])
        self.register_buffer("v", _normalize(torch.randn(v_shape, **opts))[0])
        block_shape = (
            (self.n_vectors, *v_shape[1:]) if self.input_shape else (self.n_vectors, *v_shape)
        )
        basis = torch.randn(block_shape, **opts)
        self.register_buffer("basis", self._orth(basis))
        self._key = None  # identifies the raw weight the buffers were last fitted to

    # Vectors are rows (matrix) or images (convolution): the first dimension may be a block.
    def _matvec(self, weight: Tensor, v: Tensor) -> Tensor:
        if self.input_shape is None:
            return v @ weight.T
        return F.conv2d(v, weight, padding=self.padding)

    def _rmatvec(self, weight: Tensor, u: Tensor) -> Tensor:
        if self.input_shape is None:
            return u @ weight
        return F.conv_transpose2d(u, weight, padding=self.padding)

    @staticmethod
    def _orth(block: Tensor) -> Tensor:
        """An orthonormal basis of the span of the rows of ``block`` (flattened), by SVD.

        (An SVD rather than a QR: on small blocks LAPACK's threaded QR can be 1000 times
        slower than its SVD on a busy machine.)
        """
        vh = torch.linalg.svd(block.reshape(block.shape[0], -1), full_matrices=False).Vh
        return vh.reshape(block.shape)

    @torch.no_grad()
    def power_iteration(self, weight: Tensor) -> int:
        """Refines the buffers for ``weight`` by subspace iteration; returns the iterations."""
        m = self.n_vectors
        basis = self.basis  # orthonormal rows
        image = self._matvec(weight, basis)
        sigma_old = None
        iterations = 0
        while True:
            # Rayleigh-Ritz: the unit combination c of the basis maximising |c^T image| gives
            # the estimate (s[0]) and the pair (v = c^T basis, u = qh[0]); qh spans the image.
            p, s, qh = torch.linalg.svd(image.reshape(m, -1), full_matrices=False)
            sigma = s[0]
            done = sigma_old is not None and bool((sigma - sigma_old).abs() <= self.rtol * sigma)
            if done or iterations == self.max_iterations:
                break
            sigma_old = sigma
            iterations += 1
            basis = self._orth(self._rmatvec(weight, qh.reshape(image.shape)))
            image = self._matvec(weight, basis)
        self.basis.copy_(basis)
        if bool(sigma > 0):  # else W = 0: keep the previous (unit) vectors
            self.v.copy_((p[:, 0] @ basis.reshape(m, -1)).reshape(self.v.shape))
            self.u.copy_(qh[0].reshape(self.u.shape))
        return iterations

    def sigma(self, weight: Tensor) -> Tensor:
        r"""The estimate :math:`\hat\sigma(W) = u^\top W v` (refreshing ``u``, ``v`` if needed)."""
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device, weight.shape)
        if key != self._key:
            self.power_iteration(weight)
            self._key = key
        # Clones: a later in-place update of the buffers must not touch a graph built now.
        u, v = self.u.clone(), self.v.clone()
        return (u * self._matvec(weight, v)).sum()

    def forward(self, weight: Tensor) -> Tensor:
        """Returns ``weight / max(1, sigma / coeff)``."""
        return weight / torch.clamp(self.sigma(weight) / self.coeff, min=1.0)

    def extra_repr(self) -> str:  # noqa: D102
        shape = "" if self.input_shape is None else f", input_shape={self.input_shape}"
        return f"coeff={self.coeff}{shape}, max_iterations={self.max_iterations}"


def lipschitz_norm(
    module: nn.Module,
    name: str = "weight",
    coeff: float = 0.9,
    *,
    input_shape: Sequence[int] | None = None,
    max_iterations: int = 50,
    rtol: float = 1e-6,
    n_vectors: int = 4,
) -> nn.Module:
    r"""Registers a :class:`LipschitzNorm` parametrization on ``module.<name>``.

    The counterpart of :func:`torch.nn.utils.parametrizations.spectral_norm` that rescales only
    when the spectral norm exceeds ``coeff``. ``nn.Conv2d`` modules need ``input_shape`` and
    must have stride 1, no dilation, one group and "same" zero padding (``kernel_size // 2``).

    Note:
        torch's parametrized modules can be saved with ``state_dict`` but not pickled whole;
        the layers of this module (:class:`LipschitzLinear`, :class:`LipschitzConv2d`) call
        :class:`LipschitzNorm` directly and have no such limit.

    Arguments:
        module: The module holding the weight.
        name: The name of the weight.
        coeff: The bound :math:`c` on the spectral norm.
        input_shape: The input shape ``(C, H, W)`` of a convolution.
        max_iterations: The cap on power iterations after each change of the weight.
        rtol: The relative tolerance of the power iteration.
        n_vectors: The block size of the power iteration.

    Returns:
        ``module``, parametrized.
    """
    weight = getattr(module, name)
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size
        if (
            module.stride != (1, 1)
            or module.dilation != (1, 1)
            or module.groups != 1
            or module.padding_mode != "zeros"
            or k[0] != k[1]
            or module.padding != (k[0] // 2, k[1] // 2)
        ):
            raise ValueError(
                "lipschitz_norm supports Conv2d with stride 1, dilation 1, groups 1 and zero "
                "padding kernel_size // 2 only"
            )
    norm = LipschitzNorm(
        weight,
        coeff,
        input_shape=input_shape,
        max_iterations=max_iterations,
        rtol=rtol,
        n_vectors=n_vectors,
    )
    parametrize.register_parametrization(module, name, norm)
    return module


# -- activations ------------------------------------------------------------------------------


class LipschitzELU(nn.Module):
    r"""The ELU activation (:math:`\alpha = 1`), 1-Lipschitz and continuously differentiable.

    .. math:: \phi(h) = \begin{cases} h & h > 0 \\ e^h - 1 & h \le 0 \end{cases}, \qquad
              \phi'(h) = e^{\min(h, 0)} \in (0, 1]

    Example:
        >>> act = LipschitzELU()
        >>> act.derivative(torch.tensor([-1.0, 2.0]))
        tensor([0.3679, 1.0000])
    """

    def forward(self, h: Tensor) -> Tensor:  # noqa: D102
        return F.elu(h)

    def derivative(self, h: Tensor) -> Tensor:
        r"""Returns :math:`\phi'(h)`, elementwise."""
        return torch.exp(torch.clamp(h, max=0.0))


class LipSwish(nn.Module):
    r"""The LipSwish activation of Residual Flows, 1-Lipschitz and smooth.

    .. math:: \phi(h) = \frac{h\, \mathrm{sigmoid}(\beta h)}{1.1}, \qquad
              \beta = \mathrm{softplus}(\tilde\beta) > 0,

    whose derivative lies in :math:`[-0.091, 0.9999]` for every :math:`\beta`, since
    :math:`\max_t \frac{d}{dt} t\,\mathrm{sigmoid}(t) \approx 1.0998`. Smooth everywhere, unlike
    ELU, so the gradient of a log-determinant (a second derivative) is continuous.

    Arguments:
        beta: The initial :math:`\beta`.

    Example:
        >>> act = LipSwish()
        >>> h = torch.linspace(-10, 10, 1001)
        >>> bool(act.derivative(h).abs().max() < 1)
        True

    References:
        | Residual Flows for Invertible Generative Modeling (Chen et al., 2019)
        | https://arxiv.org/abs/1906.02735
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta_init = check_positive_float(beta, "beta")
        self.raw_beta = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Sets :math:`\beta` to its initial value."""
        with torch.no_grad():
            self.raw_beta.fill_(math.log(math.expm1(self.beta_init)))

    @property
    def beta(self) -> Tensor:
        r"""The slope :math:`\beta > 0`."""
        return F.softplus(self.raw_beta)

    def forward(self, h: Tensor) -> Tensor:  # noqa: D102
        return h * torch.sigmoid(self.beta * h) / 1.1

    def derivative(self, h: Tensor) -> Tensor:
        r"""Returns :math:`\phi'(h)`, elementwise."""
        beta = self.beta
        s = torch.sigmoid(beta * h)
        return (s + beta * h * s * (1.0 - s)) / 1.1


#: Activations accepted by the Lipschitz networks, by name.
LIPSCHITZ_ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": LipschitzELU, "lipswish": LipSwish}


def _activation(name: str, lipswish_beta: float = 1.0) -> nn.Module:
    check_choice(name, tuple(LIPSCHITZ_ACTIVATIONS), "activation")
    if name == "lipswish":
        return LipSwish(lipswish_beta)
    return LIPSCHITZ_ACTIVATIONS[name]()


# -- layers -----------------------------------------------------------------------------------


class LipschitzLinear(nn.Module):
    r"""A linear layer :math:`h \mapsto \tilde W h + b` with :math:`\|\tilde W\|_2 \le c`.

    :math:`\tilde W` is the raw weight through :class:`LipschitzNorm`.

    Arguments:
        in_features: The input size.
        out_features: The output size.
        coeff: The bound :math:`c` on the spectral norm.
        bias: Whether to add a bias.
        max_power_iterations: The cap on power iterations per change of the weight.
        power_rtol: The relative tolerance of the power iteration.

    Example:
        >>> layer = LipschitzLinear(3, 8, coeff=0.5)
        >>> bool(torch.linalg.matrix_norm(layer.normalized_weight(), ord=2) <= 0.5 + 1e-4)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.9,
        bias: bool = True,
        *,
        max_power_iterations: int = 50,
        power_rtol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()
        self.norm = LipschitzNorm(
            self.weight, coeff, max_iterations=max_power_iterations, rtol=power_rtol
        )

    def reset_parameters(self) -> None:
        """Initialises the weight and bias as :class:`torch.nn.Linear` does."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def normalized_weight(self) -> Tensor:
        r"""The weight :math:`\tilde W` actually used."""
        return self.norm(self.weight)

    def linear(self, v: Tensor, weight: Tensor) -> Tensor:
        """Applies ``weight`` (no bias) to ``v`` of shape ``(..., in_features)``."""
        return F.linear(v, weight)

    def adjoint(self, u: Tensor, weight: Tensor) -> Tensor:
        """Applies the transpose of ``weight`` to ``u`` of shape ``(..., out_features)``."""
        return u @ weight

    def affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Applies ``weight`` and the bias."""
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.affine(x, self.normalized_weight(), self.bias)


class LipschitzConv2d(nn.Module):
    r"""A 2-D convolution (stride 1, "same" zero padding) with operator norm at most :math:`c`.

    The operator norm of the convolution on inputs of shape ``input_shape`` is estimated by
    :class:`LipschitzNorm`. Inputs have shape ``(*batch, C, H, W)`` for any batch shape.

    Arguments:
        input_shape: The input shape ``(C_in, H, W)``.
        out_channels: The number of output channels.
        kernel_size: An odd kernel size.
        coeff: The bound :math:`c` on the operator norm.
        bias: Whether to add a per-channel bias.
        max_power_iterations: The cap on power iterations per change of the weight.
        power_rtol: The relative tolerance of the power iteration.

    Example:
        >>> conv = LipschitzConv2d((2, 4, 4), 3)
        >>> conv(torch.randn(5, 2, 4, 4)).shape
        torch.Size([5, 3, 4, 4])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_channels: int,
        kernel_size: int = 3,
        coeff: float = 0.9,
        bias: bool = True,
        *,
        max_power_iterations: int = 50,
        power_rtol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape)
        self.out_channels = check_positive_int(out_channels, "out_channels")
        check_positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        c = self.input_shape[0]
        self.weight = nn.Parameter(torch.empty(out_channels, c, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        self.norm = LipschitzNorm(
            self.weight,
            coeff,
            input_shape=self.input_shape,
            max_iterations=max_power_iterations,
            rtol=power_rtol,
        )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """The output shape ``(C_out, H, W)``."""
        return (self.out_channels, *self.input_shape[1:])

    def reset_parameters(self) -> None:
        """Initialises the weight and bias as :class:`torch.nn.Conv2d` does."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def normalized_weight(self) -> Tensor:
        r"""The kernel :math:`\tilde W` actually used."""
        return self.norm(self.weight)

    def _batched(self, op: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
        lead = v.shape[:-3]
        out = op(v.reshape(-1, *v.shape[-3:]))
        return out.reshape(*lead, *out.shape[-3:])

    def linear(self, v: Tensor, weight: Tensor) -> Tensor:
        """Applies the convolution with ``weight`` (no bias) to ``v`` of shape ``(..., C, H, W)``."""
        return self._batched(lambda t: F.conv2d(t, weight, padding=self.padding), v)

    def adjoint(self, u: Tensor, weight: Tensor) -> Tensor:
        """Applies the adjoint (transposed) convolution to ``u``."""
        return self._batched(lambda t: F.conv_transpose2d(t, weight, padding=self.padding), u)

    def affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Applies the convolution and the bias."""
        out = self.linear(x, weight)
        return out if bias is None else out + bias[:, None, None]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.affine(x, self.normalized_weight(), self.bias)


# -- networks ---------------------------------------------------------------------------------


class Linearization:
    r"""The Jacobian :math:`J_g(x)` of a :class:`LipschitzNetwork` at a batch of points.

    With :math:`g = L_K \circ \phi \circ L_{K-1} \circ \dots \circ \phi \circ L_1`,

    .. math:: J_g(x) = W_K\, \mathrm{diag}(\phi'(h_{K-1}))\, W_{K-1} \cdots
              \mathrm{diag}(\phi'(h_1))\, W_1,

    applied to vectors without forming it: :meth:`jvp` and :meth:`vjp` cost one pass of the
    network each, are differentiable (they use the weights and activation derivatives of the
    pass that built them) and accept any number of leading dimensions in front of the batch
    shape (e.g. several probe vectors at once).

    Arguments:
        layers: The linear layers :math:`L_k`.
        weights: Their normalised weights.
        derivs: :math:`\phi'(h_k)` for the :math:`K - 1` hidden layers.
        batch_shape: The batch shape of the points.
        event_shape: The shape of one point.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        weights: Sequence[Tensor],
        derivs: Sequence[Tensor],
        batch_shape: torch.Size,
        event_shape: tuple[int, ...],
    ) -> None:
        self.layers = list(layers)
        self.weights = list(weights)
        self.derivs = list(derivs)
        self.batch_shape = torch.Size(batch_shape)
        self.event_shape = tuple(event_shape)

    def jvp(self, v: Tensor) -> Tensor:
        r"""Returns :math:`J v` for ``v`` of shape ``(..., *batch, *event)``."""
        for i, (layer, weight) in enumerate(zip(self.layers, self.weights, strict=True)):
            v = layer.linear(v, weight)
            if i < len(self.derivs):
                v = v * self.derivs[i]
        return v

    def vjp(self, u: Tensor) -> Tensor:
        r"""Returns :math:`u^\top J` for ``u`` of shape ``(..., *batch, *event)``."""
        for i in reversed(range(len(self.layers))):
            u = self.layers[i].adjoint(u, self.weights[i])
            if i > 0:
                u = u * self.derivs[i - 1]
        return u

    def matrix(self) -> Tensor:
        r"""The full Jacobian, shape ``(*batch, D, D)`` with :math:`D` the event size.

        Built column by column from :math:`D` Jacobian-vector products done as one batched
        pass: :math:`D` times the cost of the network.
        """
        w = self.weights[0]
        dim = math.prod(self.event_shape)
        basis = torch.eye(dim, dtype=w.dtype, device=w.device)
        basis = basis.reshape(dim, *([1] * len(self.batch_shape)), *self.event_shape)
        cols = self.jvp(basis).expand(dim, *self.batch_shape, *self.event_shape)
        return cols.reshape(dim, *self.batch_shape, dim).movedim(0, -1)


class LipschitzNetwork(nn.Module):
    r"""A residual branch :math:`g` with :math:`\mathrm{Lip}(g) \le c^K \le c`.

    :math:`K` Lipschitz layers (spectral norm at most :math:`c` each) alternate with
    1-Lipschitz smooth activations. Besides ``forward``, it gives :meth:`function` (the map with
    its weights normalised once, for repeated evaluation) and :meth:`linearize` (the output and
    the :class:`Linearization` at the same points, in one pass).

    Arguments:
        layers: The Lipschitz layers (with methods ``normalized_weight``, ``affine``,
            ``linear`` and ``adjoint``).
        activations: One activation (with a method ``derivative``) per hidden layer.
        event_shape: The shape of one input (and output).
        lipschitz: The bound :math:`c` of each layer.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        activations: Sequence[nn.Module],
        event_shape: Sequence[int],
        lipschitz: float,
    ) -> None:
        super().__init__()
        if len(activations) != len(layers) - 1:
            raise ValueError("need one activation between each two layers")
        self.layers = nn.ModuleList(layers)
        self.activations = nn.ModuleList(activations)
        self.event_shape = tuple(event_shape)
        self.lipschitz = lipschitz

    def reset_parameters(self) -> None:
        """Re-initialises every layer (the power-iteration buffers then follow on next use)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _context_offset(self, context: Tensor | None) -> Tensor | None:
        if context is not None:
            raise ValueError(f"{type(self).__name__} takes no context")
        return None

    def _params(self) -> list[tuple[Tensor, Tensor | None]]:
        return [(layer.normalized_weight(), layer.bias) for layer in self.layers]

    def _run(
        self,
        params: list[tuple[Tensor, Tensor | None]],
        offset: Tensor | None,
        x: Tensor,
        derivs: list[Tensor] | None,
    ) -> Tensor:
        h = x
        last = len(self.layers) - 1
        for i, (layer, (weight, bias)) in enumerate(zip(self.layers, params, strict=True)):
            h = layer.affine(h, weight, bias)
            if i == 0 and offset is not None:
                h = h + offset
            if i < last:
                act = self.activations[i]
                if derivs is not None:
                    derivs.append(act.derivative(h))
                h = act(h)
        return h

    def function(self, context: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        r"""Returns :math:`x \mapsto g(x)` (given ``context``), normalising the weights once."""
        params = self._params()
        offset = self._context_offset(context)
        return lambda x: self._run(params, offset, x, None)

    def linearize(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Linearization]:
        """Returns :math:`g(x)` and the :class:`Linearization` of :math:`g` at ``x``."""
        params = self._params()
        derivs: list[Tensor] = []
        out = self._run(params, self._context_offset(context), x, derivs)
        batch = out.shape[: out.dim() - len(self.event_shape)]
        weights = [w for w, _ in params]
        return out, Linearization(self.layers, weights, derivs, batch, self.event_shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Returns :math:`g(x)`."""
        return self._run(self._params(), self._context_offset(context), x, None)


class LipschitzMLP(LipschitzNetwork):
    r"""A fully connected residual branch for vectors, optionally fed a context.

    .. math:: g(x, c) = W_K \phi(\cdots \phi(W_1 x + U c + b_1) \cdots) + b_K,
              \qquad \|W_k\|_2 \le c_{\mathrm{Lip}},

    so :math:`\mathrm{Lip}_x(g) \le c_{\mathrm{Lip}}^K` for every context; the context weight
    :math:`U` is unconstrained (the bound is only needed in :math:`x`).

    Arguments:
        input_dim: The size :math:`D` of :math:`x` (and of :math:`g(x)`).
        hidden_dims: The hidden sizes, at least one.
        context_dim: The size of the context, or None.
        lipschitz: The bound :math:`c_{\mathrm{Lip}}` on each layer's spectral norm.
        activation: ``"elu"`` (:class:`LipschitzELU`) or ``"lipswish"`` (:class:`LipSwish`).
        max_power_iterations: The cap on power iterations per change of a weight.
        power_rtol: The relative tolerance of the power iteration.
        lipswish_beta: The initial :math:`\beta` of the :class:`LipSwish` activations (used
            with ``activation="lipswish"``).

    Example:
        >>> g = LipschitzMLP(3, [16], lipschitz=0.5)
        >>> x = torch.randn(4, 3)
        >>> out, lin = g.linearize(x)
        >>> lin.matrix().shape
        torch.Size([4, 3, 3])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        context_dim: int | None = None,
        *,
        lipschitz: float = 0.9,
        activation: str = "elu",
        max_power_iterations: int = 50,
        power_rtol: float = 1e-6,
        lipswish_beta: float = 1.0,
    ) -> None:
        check_positive_int(input_dim, "input_dim")
        hidden = check_hidden_dims(hidden_dims)
        if not hidden:
            raise ValueError("hidden_dims must have at least one entry")
        lipschitz = check_positive_float(lipschitz, "lipschitz")
        dims = [input_dim, *hidden, input_dim]
        kw = {"max_power_iterations": max_power_iterations, "power_rtol": power_rtol}
        layers = [
            LipschitzLinear(a, b, lipschitz, **kw) for a, b in zip(dims, dims[1:], strict=False)
        ]
        activations = [_activation(activation, lipswish_beta) for _ in hidden]
        super().__init__(layers, activations, (input_dim,), lipschitz)
        self.input_dim = input_dim
        self.context_dim = context_dim
        self.activation = activation
        if context_dim is not None:
            check_positive_int(context_dim, "context_dim")
            self.context_layer = nn.Linear(context_dim, hidden[0], bias=False)

    def _context_offset(self, context: Tensor | None) -> Tensor | None:
        if self.context_dim is None:
            return super()._context_offset(context)
        if context is None:
            raise ValueError(f"this network needs a context of shape (..., {self.context_dim})")
        return self.context_layer(context)


class LipschitzConvNet(LipschitzNetwork):
    r"""A convolutional residual branch for images of shape ``(C, H, W)``.

    :math:`g = L_K \circ \phi \circ \dots \circ \phi \circ L_1` with :class:`LipschitzConv2d`
    layers (stride 1, "same" padding, operator norm at most :math:`c` each), so
    :math:`\mathrm{Lip}(g) \le c^K`, and :math:`g(x)` has the shape of :math:`x`.

    Arguments:
        input_shape: The image shape ``(C, H, W)``.
        hidden_channels: The channels of the hidden layers, at least one.
        kernel_size: An odd kernel size, or one per layer (``len(hidden_channels) + 1``).
        lipschitz: The bound :math:`c` on each layer's operator norm.
        activation: ``"elu"`` or ``"lipswish"``.
        max_power_iterations: The cap on power iterations per change of a weight.
        power_rtol: The relative tolerance of the power iteration.

    Example:
        >>> g = LipschitzConvNet((2, 4, 4), [8], kernel_size=[3, 1])
        >>> g(torch.randn(5, 2, 4, 4)).shape
        torch.Size([5, 2, 4, 4])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_channels: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        *,
        lipschitz: float = 0.9,
        activation: str = "elu",
        max_power_iterations: int = 50,
        power_rtol: float = 1e-6,
    ) -> None:
        shape = _check_input_shape(input_shape)
        hidden = check_hidden_dims(hidden_channels, "hidden_channels")
        if not hidden:
            raise ValueError("hidden_channels must have at least one entry")
        lipschitz = check_positive_float(lipschitz, "lipschitz")
        channels = [shape[0], *hidden, shape[0]]
        if isinstance(kernel_size, int):
            kernels = [kernel_size] * (len(channels) - 1)
        else:
            kernels = list(kernel_size)
            if len(kernels) != len(channels) - 1:
                raise ValueError(
                    f"kernel_size must be an int or have {len(channels) - 1} entries, "
                    f"got {kernel_size!r}"
                )
        kw = {"max_power_iterations": max_power_iterations, "power_rtol": power_rtol}
        layers = [
            LipschitzConv2d((c_in, *shape[1:]), c_out, k, lipschitz, **kw)
            for c_in, c_out, k in zip(channels, channels[1:], kernels, strict=False)
        ]
        activations = [_activation(activation) for _ in hidden]
        super().__init__(layers, activations, shape, lipschitz)
        self.activation = activation
