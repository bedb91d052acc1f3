r"""Checkpoints of a training run, written atomically, and resuming from them.

A checkpoint holds everything a training helper needs to continue as if it had never
stopped: the model's and optimiser's states, the step, the early-stopping state, the
minibatch order and every random generator (torch's CPU and CUDA generators, numpy's and
Python's). A run resumed from the checkpoint written after step :math:`k` takes steps
:math:`k+1, \dots, T` exactly as the uninterrupted run would have: the same parameters, to
the last bit, on the same device and in the same precision.

Files are written to a temporary file next to the target and renamed, so a run killed while
writing (``SIGKILL``, a pre-empted job) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import check_positive_int

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpointer",
    "atomic_save",
    "get_rng_state",
    "set_rng_state",
]

#: The layout version of checkpoint files; a file of another version is refused.
CHECKPOINT_VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed when complete.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_save({"step": 3}, pathlib.Path(d) / "c.pt")
        ...     torch.load(pathlib.Path(d) / "c.pt")["step"]
        3
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"checkpoint: the directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def get_rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and initialised CUDA), numpy's and Python's generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores generators saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Checkpointer:
    """Where and how often a training helper writes its checkpoint, and what it resumes.

    Arguments:
        path: The checkpoint file, or None for no checkpoints.
        every: Write after every ``every`` steps (and after the last step).
        resume: A checkpoint file to continue from; ``True`` for ``path`` when it exists (a
            fresh start when it does not, so that the same command serves the first run and
            every restart).
        writer: Whether this process writes (rank 0 under ``torchrun``).
        minutes: Also write when this many minutes have passed since the last write (or the
            start), whatever the step; None for steps only.
    """

    path: Path | None = None
    every: int = 100
    resume: Path | bool | None = None
    writer: bool = True
    minutes: float | None = None
    clock: list[float] = field(default_factory=lambda: [time.monotonic()])

    @classmethod
    def create(
        cls,
        checkpoint: str | os.PathLike | None,
        checkpoint_every: int,
        resume: str | os.PathLike | bool | None,
        writer: bool = True,
        checkpoint_minutes: float | None = None,
    ) -> Checkpointer:
        """Checks the training helpers' arguments ``checkpoint``, ``checkpoint_every``, ``resume``."""
        check_positive_int(checkpoint_every, "checkpoint_every")
        if checkpoint_minutes is not None and not (
            isinstance(checkpoint_minutes, int | float)
            and not isinstance(checkpoint_minutes, bool)
            and math.isfinite(checkpoint_minutes)
            and checkpoint_minutes > 0
        ):
            raise ValueError(
                f"checkpoint_minutes must be a positive number or None, got {checkpoint_minutes!r}"
            )
        path = None if checkpoint is None else Path(checkpoint)
        if path is not None and not path.parent.is_dir():
            raise FileNotFoundError(
                f"checkpoint: the directory {str(path.parent)!r} of {str(path)!r} does not exist"
            )
        if resume is True and path is None:
            raise ValueError("resume=True resumes from checkpoint, but checkpoint is None")
        if resume is not None and not isinstance(resume, bool):
            resume = Path(resume)
            if not resume.is_file():
                raise FileNotFoundError(f"resume: no checkpoint file {str(resume)!r}")
        return cls(path, checkpoint_every, resume or None, writer, checkpoint_minutes)

    def due(self, step: int, last: bool) -> bool:
        """Whether to write the checkpoint after ``step``.

        After every ``every`` steps, at the last step, and when ``minutes`` have passed since
        the last write.
        """
        if self.path is None or not self.writer:
            return False
        late = self.minutes is not None and time.monotonic() - self.clock[0] >= 60 * self.minutes
        return step % self.every == 0 or last or late

    def save(self, kind: str, state: dict[str, Any]) -> None:
        """Writes ``state`` (plus the kind, version and RNG states), atomically."""
        payload = {"kind": kind, "version": CHECKPOINT_VERSION, "rng": get_rng_state(), **state}
        atomic_save(payload, self.path)
        self.clock[0] = time.monotonic()

    def load(self, kind: str) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None for a fresh start.

        Raises:
            ValueError: If the file is not a checkpoint of ``kind`` (e.g. one of
                ``fit_flow_matching`` given to ``fit``) or of another version.
        """
        if self.resume is None:
            return None
        path = self.path if self.resume is True else self.resume
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"resume: {path} is not a readable checkpoint ({e})") from None
        if not isinstance(state, dict) or state.get("kind") != kind:
            found = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"resume: {path} is not a checkpoint of {kind} (it is {found!r})")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"resume: {path} has checkpoint version {state.get('version')!r}; this "
                f"pyro_flows reads version {CHECKPOINT_VERSION}"
            )
        return state

    @staticmethod
    def check_config(state: dict[str, Any], config: dict[str, Any], path: Any) -> None:
        """Refuses to resume a run whose settings differ from the checkpoint's."""
        saved = state.get("config", {})
        for key, value in config.items():
            if key in saved and saved[key] != value:
                raise ValueError(
                    f"resume: the checkpoint was written with {key}={saved[key]!r}, this run has "
                    f"{key}={value!r}; resume with the same settings"
                )
