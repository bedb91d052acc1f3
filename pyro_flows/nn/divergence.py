"""The divergence of a vector field by autograd: exactly, or by Hutchinson's estimator."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice

__all__ = [
    "NOISES",
    "divergence",
    "divergence_and_frobenius",
    "hutchinson_noise",
]

#: The distributions of the probe vectors of Hutchinson's estimator.
NOISES: tuple[str, ...] = ("gaussian", "rademacher")


def hutchinson_noise(x: Tensor, noise: str = "gaussian") -> Tensor:
    r"""Draws a probe :math:`\epsilon` shaped like ``x`` with :math:`E[\epsilon\epsilon^\top] = I`.

    Arguments:
        x: A tensor whose shape, dtype and device the probe takes.
        noise: ``"gaussian"`` (:math:`\epsilon \sim N(0, I)`) or ``"rademacher"`` (entries
            :math:`\pm 1` with probability 1/2; a lower variance for the trace estimate).

    Example:
        >>> hutchinson_noise(torch.zeros(2, 3), "rademacher").abs().unique()
        tensor([1.])
    """
    check_choice(noise, NOISES, "noise")
    if noise == "gaussian":
        return torch.randn_like(x)
    return torch.randint_like(x, 0, 2).mul_(2).sub_(1)


def divergence_and_frobenius(
    v: Tensor,
    x: Tensor,
    noise: Tensor | None = None,
    *,
    create_graph: bool = False,
    frobenius: bool = True,
) -> tuple[Tensor, Tensor | None]:
    r"""The divergence :math:`\operatorname{tr}(\partial v/\partial x)` and :math:`\|\partial v/\partial x\|_F^2`.

    With ``noise=None`` both are exact, from the :math:`D` vector-Jacobian products
    :math:`e_i^\top J` (the rows of :math:`J`): cost :math:`D` backward passes. With a probe
    :math:`\epsilon` (one backward pass), both are Hutchinson's unbiased estimates

    .. math:: \operatorname{tr} J \approx \epsilon^\top J \epsilon, \qquad
              \|J\|_F^2 \approx \|\epsilon^\top J\|^2 .

    ``v`` must have been computed from ``x`` row by row (rows of a batch do not interact);
    the Jacobian is then block diagonal and each row gets its own values.

    Arguments:
        v: The field, shape ``(*batch, D)``, computed from ``x`` with autograd recording.
        x: The point, shape ``(*batch, D)``.
        noise: A probe shaped like ``v`` (see :func:`hutchinson_noise`), or None for the exact
            values.
        create_graph: Keep the graph of the result (to differentiate it, e.g. in training).
        frobenius: Also compute the squared Frobenius norm (else None is returned for it).

    Returns:
        The divergence and the squared Frobenius norm, each of shape ``batch``.

    Example:
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> div, frob = divergence_and_frobenius(2 * x, x)
        >>> div, frob
        (tensor([6., 6., 6., 6.]), tensor([12., 12., 12., 12.]))
    """
    batch = v.shape[:-1]
    zeros = v.new_zeros(batch)
    if not v.requires_grad:  # a field that does not depend on anything with a gradient
        return zeros, (zeros if frobenius else None)
    if noise is not None:
        (row,) = torch.autograd.grad(
            v, x, noise, create_graph=create_graph, retain_graph=True, allow_unused=True
        )
        if row is None:
            return zeros, (zeros if frobenius else None)
        row = row.expand(v.shape)
        div = (row * noise).sum(-1)
        return div, (row.pow(2).sum(-1) if frobenius else None)
    div, frob = zeros, zeros
    basis = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
    for i in range(v.shape[-1]):
        (row,) = torch.autograd.grad(
            v,
            x,
            basis[i].expand(v.shape),
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
        )
        if row is None:
            continue
        row = row.expand(v.shape)
        div = div + row[..., i]
        if frobenius:
            frob = frob + row.pow(2).sum(-1)
    return div, (frob if frobenius else None)


def divergence(
    v: Tensor, x: Tensor, noise: Tensor | None = None, *, create_graph: bool = False
) -> Tensor:
    r"""The divergence :math:`\nabla \cdot v = \operatorname{tr}(\partial v / \partial x)`.

    Exact with ``noise=None`` (:math:`D` backward passes), else Hutchinson's estimate
    :math:`\epsilon^\top (\partial v/\partial x)\, \epsilon` (one backward pass). See
    :func:`divergence_and_frobenius` for the arguments.

    Example:
        >>> x = torch.randn(5, 2, requires_grad=True)
        >>> # v = (x0 x1, x1 x0): dv0/dx0 = x1, dv1/dx1 = x0
        >>> torch.allclose(divergence(x.flip(-1) * x, x), x.sum(-1))
        True

    References:
        | A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
          splines (Hutchinson, 1989)
        | https://doi.org/10.1080/03610918908812806
    """
    return divergence_and_frobenius(v, x, noise, create_graph=create_graph, frobenius=False)[0]
