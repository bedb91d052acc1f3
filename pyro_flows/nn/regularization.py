"""The regularisers of "How to train your neural ODE": kinetic energy and Jacobian norm."""

from __future__ import annotations

from torch import Tensor, nn

from .divergence import divergence_and_frobenius

__all__ = [
    "jacobian_frobenius",
    "kinetic_energy",
    "ode_regularization",
]


def kinetic_energy(v: Tensor) -> Tensor:
    r"""The kinetic energy integrand :math:`\|v\|^2` of a field value, shape ``v.shape[:-1]``.

    Integrated along a trajectory, :math:`\int_0^T \|f(t, x(t))\|^2 dt` favours straight paths
    travelled at constant speed, which an adaptive solver integrates in few steps.

    Example:
        >>> kinetic_energy(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([25.,  0.])

    References:
        | How to train your neural ODE: the world of Jacobian and kinetic regularization
          (Finlay et al., 2020)
        | https://arxiv.org/abs/2002.02798
    """
    return v.pow(2).sum(-1)


def jacobian_frobenius(
    v: Tensor, x: Tensor, noise: Tensor | None = None, *, create_graph: bool = True
) -> Tensor:
    r"""The Jacobian integrand :math:`\|\partial v/\partial x\|_F^2`, exact or estimated.

    Exact with ``noise=None`` (:math:`D` backward passes); with a probe :math:`\epsilon`
    (see :func:`~pyro_flows.nn.hutchinson_noise`) the unbiased estimate
    :math:`\|\epsilon^\top \partial v/\partial x\|^2` (one backward pass).

    Arguments:
        v: The field, shape ``(*batch, D)``, computed row by row from ``x``.
        x: The point, shape ``(*batch, D)``.
        noise: A probe shaped like ``v``, or None for the exact value.
        create_graph: Keep the graph (to train with it as a penalty).

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> jacobian_frobenius(3 * x, x)  # J = 3 I
        tensor([18., 18., 18.])

    References:
        | How to train your neural ODE: the world of Jacobian and kinetic regularization
          (Finlay et al., 2020)
        | https://arxiv.org/abs/2002.02798
    """
    return divergence_and_frobenius(v, x, noise, create_graph=create_graph)[1]


def ode_regularization(module: nn.Module, kinetic: float = 0.0, jacobian: float = 0.0) -> Tensor:
    r"""The weighted penalties of the last solve of every continuous flow inside ``module``.

    .. math:: R = \lambda_K \sum_\ell \operatorname{mean}_i \int_0^T \|f_\ell\|^2 dt
              + \lambda_J \sum_\ell \operatorname{mean}_i \int_0^T
              \|\partial f_\ell / \partial x\|_F^2 dt

    over the layers :math:`\ell` built with ``regularize=True`` (e.g.
    :class:`~pyro_flows.transforms.FFJORD`), each integral taken along the trajectory of row
    :math:`i` in the layer's last solve. Add it to the loss after computing the log-likelihood:

    .. code-block:: python

        loss = -flow.log_prob(x).mean() + ode_regularization(flow, kinetic=0.01, jacobian=0.01)

    Arguments:
        module: A module holding continuous flows (a flow, a transform, a stack).
        kinetic: The weight :math:`\lambda_K` of the kinetic energy.
        jacobian: The weight :math:`\lambda_J` of the Jacobian Frobenius norm.

    Raises:
        ValueError: If no layer of ``module`` records penalties (none has ``regularize=True``,
            or none has been run yet).
    """
    total = None
    for m in module.modules():
        terms = getattr(m, "regularization_terms", None)
        terms = terms() if callable(terms) else None
        if terms is None:
            continue
        value = kinetic * terms["kinetic"].mean() + jacobian * terms["jacobian"].mean()
        total = value if total is None else total + value
    if total is None:
        raise ValueError(
            "no continuous flow in this module records penalties: build it with "
            "regularize=True and run it (e.g. log_prob) before asking for them"
        )
    return total
