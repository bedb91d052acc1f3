r"""Where training runs: choosing a device, and data-parallel training under ``torchrun``.

The training helpers (:func:`~pyro_flows.training.fit`,
:func:`~pyro_flows.matching.fit_flow_matching`, :func:`~pyro_flows.infer.fit_svi`) call
:func:`resolve_device` for their ``device=`` argument and :func:`setup` before their first
step. When the script runs under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``) or after a user's own
:func:`torch.distributed.init_process_group`, each of the :math:`W` processes takes the
slice :math:`[r B/W, (r+1) B/W)` of every global minibatch of :math:`B` rows (the same
indices on every rank, from a seed agreed by rank 0), the gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`, so that with equal slices

.. math:: \frac{1}{W} \sum_{r=1}^{W} \nabla \frac{W}{B} \sum_{i \in B_r} \ell_i
          = \nabla \frac{1}{B} \sum_{i \in B} \ell_i,

the step of one process on the whole minibatch; rank 0 alone prints and writes files.
Nothing here is a framework of its own: it is ``torch.distributed`` with the ``gloo``
backend on CPUs and ``nccl`` on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "LogProbModule",
    "resolve_device",
    "setup",
    "wrap_ddp",
]


def resolve_device(
    device: str | torch.device | None, default: torch.device | None = None
) -> torch.device:
    """The :class:`torch.device` named by ``device``.

    ``"auto"`` is CUDA when :func:`torch.cuda.is_available`, else the CPU; under ``torchrun``
    ``"auto"`` and ``"cuda"`` mean this process's GPU, ``cuda:LOCAL_RANK``. ``None`` gives
    ``default`` (the device of a model's parameters, for the training helpers).

    Arguments:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, any other torch device
            name, a :class:`torch.device`, or None.
        default: The device returned for ``None``.

    Raises:
        ValueError: For CUDA without a CUDA device, ``cuda:N`` beyond the devices present,
            or a name torch does not know; the message names ``device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device(None, torch.device("meta"))
        device(type='meta')
    """
    if device is None:
        return default if default is not None else torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device, "
            f"got {device!r} ({e})"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for, but CUDA is not available on this "
                "machine (torch.cuda.is_available() is False); use 'cpu' or 'auto'"
            )
        if dev.index is None and "LOCAL_RANK" in os.environ:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} was asked for, but this machine has {count} CUDA "
                f"device(s): cuda:0 to cuda:{count - 1}"
            )
    return dev


@dataclass(frozen=True)
class DistributedContext:
    """The process group a training helper runs in.

    Arguments:
        rank: This process's rank :math:`r`, from 0.
        world_size: The number of processes :math:`W` (1 without ``torch.distributed``).
    """

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        """Whether more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process prints and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, batch_size: int, name: str = "batch_size") -> slice:
        """The slice of a global minibatch of ``batch_size`` rows that this rank takes.

        Raises:
            ValueError: If the world size does not divide ``batch_size`` (naming ``name``).
        """
        if batch_size % self.world_size:
            raise ValueError(
                f"{name}={batch_size} is not divisible by the world size {self.world_size}: "
                "every process takes an equal share of each minibatch; choose a multiple "
                f"of {self.world_size}"
            )
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def all_sum(self, values: Tensor) -> Tensor:
        """The sum of ``values`` over the ranks (``values`` itself in one process)."""
        if not self.active:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value``, on every rank."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
        dist.broadcast(t, src=0)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank (so that every rank acts together)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def _comm_device() -> torch.device:
    """The device of the tensors the process group's backend exchanges."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup(device: torch.device | None = None) -> DistributedContext:
    """Joins the ``torchrun`` process group if there is one; returns this process's place.

    An initialised :mod:`torch.distributed` group is used as it is. Otherwise, when the
    environment has ``WORLD_SIZE > 1`` and ``RANK`` (as ``torchrun`` sets them), the group is
    initialised with ``nccl`` for a CUDA ``device`` and ``gloo`` otherwise. In a plain run
    this returns rank 0 of 1 and touches nothing.

    Arguments:
        device: The device the model trains on (chooses the backend).

    Example:
        >>> setup()
        DistributedContext(rank=0, world_size=1)
    """
    if not dist.is_available():
        return DistributedContext()
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or "RANK" not in os.environ:
            return DistributedContext()
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size())


class LogProbModule(nn.Module):
    """``forward(x, c) = model.log_prob(x[, c])``: what DDP wraps, as DDP hooks ``forward``.

    Arguments:
        model: A module with a ``log_prob`` method.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The log-density of each row."""
        return self.model.log_prob(x) if c is None else self.model.log_prob(x, c)


def wrap_ddp(module: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` when ``ctx`` is active.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts
    from the same model.
    """
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
