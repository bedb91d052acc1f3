"""Pyro's own flow families (splines, NAF, BNAF) behind the pyro_flows contract, not re-written."""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions.utils import _sum_rightmost

from .base import ConditionalFlowTransform, FlowTransform, broadcast_context

__all__ = ["ConditionalPyroTransform", "PyroTransform"]


class PyroTransform(FlowTransform):
    """Wraps a Pyro ``TransformModule`` so it meets the pyro_flows contract.

    The wrapped transform does the work; the wrapper adds what it lacks: a cache that is
    dropped after an optimizer step, a module-valued ``inv``, a log-determinant summed over the
    event (for element-wise transforms such as :func:`pyro.distributions.transforms.spline`),
    and a clear error for families without an analytic inverse (NAF, BNAF).

    Arguments:
        transform: A Pyro transform on vectors of size ``input_dim``.
        input_dim: The event size :math:`D`.
        owner: The module holding the parameters when ``transform`` itself does not (a
            transform returned by a Pyro conditional module's ``.condition``).
        context: The context ``transform`` was conditioned on, if any; inputs are broadcast
            against its batch shape before they reach Pyro.
        invertible: False for families without an analytic inverse (NAF, BNAF): their inverse
            raises NotImplementedError, while their own samples are still scored from the cache.

    Example:
        >>> import pyro.distributions.transforms as T
        >>> t = PyroTransform(T.spline_coupling(3), 3)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-4)
        True
    """

    def __init__(
        self,
        transform: nn.Module,
        input_dim: int,
        owner: nn.Module | None = None,
        context: Tensor | None = None,
        invertible: bool = True,
        cache_size: int = 1,
    ) -> None:
        super().__init__(input_dim, cache_size=cache_size)
        self.transform = transform
        self.invertible = invertible
        self.owner = owner
        self.context = context
        # Pyro's transforms hand the log-determinant of their last pass to
        # log_abs_det_jacobian through their own one-slot cache; make sure it exists.
        transform._cache_size = 1
        transform._cached_x_y = None, None

    def _event_sum(self, ladj: Tensor) -> Tensor:
        return _sum_rightmost(ladj, 1 - self.transform.domain.event_dim)

    def _broadcast(self, v: Tensor) -> Tensor:
        return v if self.context is None else broadcast_context(v, self.context)[0]

    def _call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self._broadcast(x)
        self.transform._cached_x_y = None, None  # never let Pyro's cache answer
        y = self.transform(x)
        return y, self._event_sum(self.transform.log_abs_det_jacobian(x, y))

    def _inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if not self.invertible:
            raise NotImplementedError(
                f"{type(self.transform).__name__} has no analytic inverse: use it in the "
                "sampling direction only (e.g. in a variational guide), not to score data"
            )
        y = self._broadcast(y)
        self.transform._cached_x_y = None, None
        x = self.transform.inv(y)
        return x, self._event_sum(self.transform.log_abs_det_jacobian(x, y))

    def __repr__(self) -> str:
        return f"PyroTransform({self.transform!r})"


class ConditionalPyroTransform(ConditionalFlowTransform):
    """Wraps a Pyro ``ConditionalTransformModule``; ``.condition(c)`` gives a :class:`PyroTransform`.

    Arguments:
        transform: A Pyro conditional transform module.
        input_dim: The event size :math:`D`.
        context_dim: The context size :math:`C`.
        invertible: False for families without an analytic inverse.
    """

    def __init__(
        self, transform: nn.Module, input_dim: int, context_dim: int, invertible: bool = True
    ) -> None:
        super().__init__(input_dim, context_dim)
        self.transform = transform
        self.invertible = invertible

    def _condition(self, context: Tensor) -> PyroTransform:
        inner = self.transform.condition(context)
        return PyroTransform(
            inner,
            self.input_dim,
            owner=self.transform,
            context=context,
            invertible=self.invertible,
        )
