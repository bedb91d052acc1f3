"""Density estimation on tables, in the style of scikit-learn: fit, score, sample, save, load."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor

from . import transforms as T
from ._density_memmap import _seeded, fit_memmap
from ._progress import progress_bar
from ._validation import check_choice, check_hidden_dims, check_positive_int
from .bases import _COVARIANCES, GaussianMixture
from .data import MemmapTable
from .dequantization import LatticeDequantization, lattice_widths
from .distributed import resolve_device
from .distributions import NormalizingFlow
from .flows import FAMILIES, _accepts, build, lookup_family
from .nn.dense import default_hidden_dims
from .nn.made import HiddenWidthWarning
from .training import FitHistory
from .training import fit as fit_model
from .transforms.standardization import Standardization, _check_loc_scale

__all__ = [
    "FORMAT_VERSION",
    "ContextStandardization",
    "DensityEstimator",
    "ModelFileError",
    "Standardization",
]

#: The version of the file layout written by :meth:`DensityEstimator.save`. It changes whenever
#: a file written by one version could be read wrongly by another; :meth:`DensityEstimator.load`
#: refuses any other version.
FORMAT_VERSION = 3
# Version 1 (before learnable bases) files are version 2 files with a standard normal base;
# version 2 files are version 3 files without lattice widths (dequantization) or a choice of
# flow="auto".
_READABLE_VERSIONS = (1, 2, 3)
_AUTO = "auto"
_DEQUANTIZE = (_AUTO, False)
#: The mixtures tried by ``flow="auto"``: K components, full or diagonal covariances.
_AUTO_COMPONENTS = (1, 2, 3, 4, 5)
_AUTO_COVARIANCES = ("full", "diag")
#: EM of the candidate mixtures runs on at most this many (dequantised) rows.
_AUTO_EM_ROWS = 4096
#: Below this many rows ``flow="auto"`` chooses the mixture by cross-validation, in this many
#: folds, rather than on the validation rows alone.
_AUTO_CV_ROWS = 1000
_AUTO_FOLDS = 5
#: Below this many training rows ``flow="auto"`` uses small networks.
_AUTO_SMALL = 2000
#: The number of cell points of the dequantised density's estimate when scoring.
_DEQUANT_DRAWS = 64
_BASES = ("normal", "gmm")
_FORMAT = "pyro_flows.density.DensityEstimator"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CHUNK = 8192
#: Rows drawn at once by DensityEstimator.sample.
_SAMPLE_CHUNK = 65_536
#: The hidden sizes of families with networks when ``hidden_dims`` is None.
_DEFAULT_HIDDEN = (64, 64)


class ModelFileError(ValueError):
    """A model file that cannot be loaded: foreign, corrupt, or from an incompatible version."""


# -- transforms -------------------------------------------------------------------------------


class ContextStandardization(ConditionalTransformModule):
    r"""Standardises the context before it reaches a conditional transform.

    ``condition(c)`` returns ``transform.condition((c - loc) / scale)``. This changes how the
    context is fed to the networks only, not the density of :math:`x`, so it has no
    log-determinant. ``loc`` and ``scale`` are buffers.

    Arguments:
        transform: A ``ConditionalTransformModule``.
        loc: The context shift, shape ``(C,)``.
        scale: The positive context scales, shape ``(C,)``.

    Example:
        >>> from pyro_flows.flows import build
        >>> inner = build("maf", 2, num_layers=1, context_dim=1, hidden_dims=[8])
        >>> t = ContextStandardization(inner, torch.tensor([100.0]), torch.tensor([10.0]))
        >>> t.condition(torch.tensor([110.0]))(torch.zeros(2)).shape
        torch.Size([2])
    """

    def __init__(self, transform: ConditionalTransformModule, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        loc = torch.as_tensor(loc)
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=loc.dtype)
        _check_loc_scale(loc, scale, "ContextStandardization")
        self.transform = transform
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    def condition(self, context: Tensor) -> torch.nn.Module:
        """Returns the inner transform conditioned on the standardised ``context``."""
        return self.transform.condition((context - self.loc) / self.scale)

    def __hash__(self) -> int:
        return id(self)


# -- helpers ----------------------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write(f)`` on a temporary file next to ``path``, then renames it to ``path``.

    Readers of ``path`` see the old file or the complete new one, never a partial one; on any
    error (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"the directory {str(path.parent)!r} does not exist", str(path)
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _column_names(names: Sequence[Any] | None, width: int, what: str) -> list[str] | None:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != width:
        raise ValueError(f"{what} has {len(names)} names for {width} columns")
    return names


def _as_table(x: Any, name: str) -> tuple[np.ndarray, list[str] | None]:
    """Returns ``x`` as a float64 array of shape (rows, columns), and its column names if any."""
    names = None
    columns = getattr(x, "columns", None)  # a pandas DataFrame, without importing pandas
    if columns is not None and not isinstance(x, np.ndarray | Tensor):
        names = [str(c) for c in columns]
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array of numbers: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (num_rows, num_columns), got shape {arr.shape}"
            + ("; use x.reshape(-1, 1) for one column" if arr.ndim == 1 else "")
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr.astype(np.float64), names


def _describe(names: list[str] | None, j: int) -> str:
    return repr(names[j]) if names is not None else str(j)


def _match_columns(
    x: np.ndarray, given: list[str] | None, fitted: list[str] | None, name: str, attr: str
) -> np.ndarray:
    """Returns the columns of ``x`` in the order of ``fitted``, matched by name.

    Names are matched only when both ``x`` (a DataFrame) and the model have them; otherwise the
    columns are taken by position. A fitted name missing from ``x``, or a name of ``x`` the
    model was not fitted on, is refused (the messages follow the command line's).
    """
    if given is None or fitted is None:
        return x
    for n in set(given):
        if given.count(n) > 1:
            raise ValueError(f"{name}: has several columns named {n!r}")
    for n in fitted:
        if n not in given:
            raise ValueError(
                f"{name}: has no column {n!r} (the model's {attr}); its columns are: "
                f"{', '.join(given)}"
            )
    for n in given:
        if n not in fitted:
            raise ValueError(
                f"{name}: has a column {n!r} that the model was not fitted on (its {attr}: "
                f"{', '.join(fitted)}); drop it"
            )
    return x[:, [given.index(n) for n in fitted]]


def _check_scale(
    mean: np.ndarray, scale: np.ndarray, x: np.ndarray, name: str, names: list[str] | None
) -> None:
    """Refuses columns whose mean or standard deviation overflows, naming the column."""
    bad = ~(np.isfinite(mean) & np.isfinite(scale))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} column {_describe(names, j)} is too large to standardise (values up to "
            f"{np.abs(x[:, j]).max():.3g}; its standard deviation overflows): rescale it"
        )


#: A column with at most this many distinct values, all integers, each repeated on average at
#: least twice, looks discrete.
_DISCRETE_MAX_VALUES = 10


def _warn_discrete(
    x: np.ndarray, name: str, names: list[str] | None, dequantized: bool = False
) -> None:
    """Warns about columns that look discrete: a density of them is a histogram at best."""
    for j in range(x.shape[1]):
        col = x[:, j]
        if not np.array_equal(col, np.round(col)):
            continue
        values = np.unique(col)
        if values.size > _DISCRETE_MAX_VALUES or 2 * values.size > col.size:
            continue
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        if dequantized:
            advice = (
                "it looks discrete; it is dequantized (uniform noise across each value's cell), "
                "so the density there is the probability of the value spread over its cell; "
                "or use it as context"
            )
        else:
            advice = (
                "it looks discrete, and a continuous density on it grows without bound at "
                "those values; dequantize it (dequantize='auto', or add uniform noise in "
                "[0, 1) to each value), or use it as context"
            )
        warnings.warn(
            f"{name} column {_describe(names, j)} holds only {values.size} distinct integer "
            f"values ({shown}): {advice}",
            UserWarning,
            stacklevel=3,
        )


def _check_finite_columns(x: np.ndarray, name: str, names: list[str] | None) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        j = int(np.flatnonzero(bad.any(0))[0])
        i = int(np.flatnonzero(bad[:, j])[0])
        raise ValueError(
            f"{name} column {_describe(names, j)} has {int(bad[:, j].sum())} NaN or infinite "
            f"value(s) (the first in row {i}); clean or drop those rows"
        )


def _check_not_constant(x: np.ndarray, name: str, names: list[str] | None, where: str) -> None:
    constant = np.ptp(x, axis=0) == 0
    if constant.any():
        j = int(np.flatnonzero(constant)[0])
        raise ValueError(
            f"{name} column {_describe(names, j)} is constant{where} (every value is "
            f"{x[0, j]:g}): it has no density; drop the column"
        )


def _history_from_dict(d: dict[str, Any]) -> FitHistory:
    fields = inspect.signature(FitHistory).parameters
    return FitHistory(**{k: v for k, v in d.items() if k in fields})


def _digest(meta: str, state: dict[str, Tensor]) -> str:
    """A SHA-256 over the metadata and every tensor's dtype, shape and bytes."""
    h = hashlib.sha256(meta.encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _FitData:
    """The rows a fit works on: training and validation rows, standardisation, lattice."""

    xt: np.ndarray
    ct: np.ndarray | None
    xv: np.ndarray | None
    cv: np.ndarray | None
    mean: np.ndarray | None
    scale: np.ndarray | None
    cmean: np.ndarray | None
    cscale: np.ndarray | None
    widths: np.ndarray


#: Rows of dequantised copies EM sees (the rows are repeated, each with fresh noise, up to it).
_EM_ROWS = 1024


def _dequantised_rows(
    x: np.ndarray, c: np.ndarray | None, widths: np.ndarray, seed: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of the rows with uniform noise across each lattice cell, for EM to fit."""
    if not widths.any():
        return x, c
    copies = max(1, min(10, _EM_ROWS // x.shape[0]))
    rng = np.random.default_rng(seed)
    xs = np.concatenate([x] * copies)
    xs = xs + widths * (rng.random(xs.shape) - 0.5)
    return xs, None if c is None else np.concatenate([c] * copies)


def _log_mix(log_p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``log sum_m w_m exp(log_p[:, m])`` per row."""
    with np.errstate(divide="ignore"):
        a = log_p + np.log(weights)
    top = a.max(1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(1, keepdims=True)))[:, 0]


def _stacking_weights(log_p: np.ndarray, num_iters: int = 500, tol: float = 1e-8) -> np.ndarray:
    r"""The weights :math:`w` of the densities that maximise the held-out log-likelihood.

    .. math:: \max_{w \in \Delta} \sum_i \log \sum_m w_m\, p_m(x_i)

    over out-of-fold log-densities ``log_p`` of shape ``(rows, models)``, by EM on the weights
    (stacked density estimation, Smyth & Wolpert, 1999); weights below :math:`10^{-3}` are
    dropped and the rest renormalised. Non-finite scores count as zero density.
    """
    log_p = np.where(np.isfinite(log_p), log_p, -np.inf)
    ok = np.isfinite(log_p).any(0)
    w = np.where(ok, 1.0, 0.0) / ok.sum()
    old = -np.inf
    for _ in range(num_iters):
        total = _log_mix(log_p, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            resp = np.exp(log_p + np.log(w) - total[:, None])
        w = np.nan_to_num(resp).mean(0)
        w = w / w.sum()
        ll = float(total.mean())
        if ll - old < tol:
            break
        old = ll
    w = np.where(w >= 1e-3, w, 0.0)
    return w / w.sum()


def _combine_mixtures(parts: list[GaussianMixture], weights: list[float]) -> GaussianMixture:
    """One full-covariance mixture holding every component of ``parts``, weighted."""
    dim = parts[0].input_dim
    out = GaussianMixture(dim, sum(p.num_components for p in parts), "full")
    out = out.to(parts[0].loc.dtype)
    with torch.no_grad():
        tril = torch.cat([p.scale_tril for p in parts])
        out.loc.copy_(torch.cat([p.loc for p in parts]))
        out.log_diag.copy_(tril.diagonal(dim1=-2, dim2=-1).log())
        out.lower.copy_(torch.tril(tril, diagonal=-1))
        out.logits.copy_(
            torch.cat(
                [
                    p.logits.log_softmax(-1) + math.log(w)
                    for p, w in zip(parts, weights, strict=True)
                ]
            )
        )
    return out


def _scorer(model: NormalizingFlow, widths: np.ndarray | None) -> torch.nn.Module:
    """The density of the data: the flow, or the flow averaged over each lattice cell."""
    if widths is None or not widths.any():
        return model
    buffer = next(iter(model.buffers()))
    return LatticeDequantization(
        model,
        torch.as_tensor(widths, dtype=buffer.dtype, device=buffer.device),
        num_draws=_DEQUANT_DRAWS,
    ).eval()


# -- the estimator ----------------------------------------------------------------------------


class DensityEstimator:
    r"""A normalizing flow fitted to the rows of a table, used like a scikit-learn estimator.

    ``fit(X)`` learns a density :math:`q(x)` (or, with ``context``, :math:`q(x \mid c)`) by
    maximum likelihood; ``score_samples(X)`` returns :math:`\log q(x)` per row, in nats and in
    the data's own units; ``sample(n)`` draws rows; ``save``/``load`` keep everything needed to
    score again, identically.

    With no arguments (``flow="auto"``) it chooses its model on the validation rows among a
    Gaussian mixture (:math:`K = 1, \dots, 5` components, full or diagonal covariances, fitted
    by EM), a MAF on the best of those mixtures as its base (started at the mixture itself, so
    early stopping keeps the mixture unless the flow improves on it) and a MAF on a normal
    base; on a tie the simpler model wins, and a chosen mixture is refitted on every row. Below
    2 000 training rows the flows are regularised (hidden sizes 32-32 unless ``hidden_dims``
    is given, a weight decay of at least :math:`10^{-3}`, early stopping with patience 20
    unless ``patience`` is given, validation every 10 steps at most). ``selection_`` (also
    ``info_["selection"]``, saved with the model) records what was chosen, its settings and
    every candidate's validation NLL. With a context, or without validation rows, only the
    flow is fitted (a mixture takes no context, and nothing could choose). One column gets
    ``"spline"`` layers instead of MAF.

    With ``dequantize="auto"`` columns recorded on a grid (rounded to 0.1 cm, counts, scaled
    integers: :func:`~pyro_flows.dequantization.lattice_widths`) are dequantised: the flow
    :math:`q` is fitted to the rows plus uniform noise across each grid cell of width
    :math:`h_j`, fresh at every step, and the model's density is :math:`q` averaged over the
    cell, :math:`p(x) = \mathbb{E}_u\, q(x + h \odot (u - \frac12))`
    (:class:`~pyro_flows.dequantization.LatticeDequantization`, estimated from 64 fixed cell
    points when scoring), a proper density that is finite on and off the grid. Without it a
    flow on rounded data can collapse onto the grid and score a held-out row at
    :math:`-10^6` nats. ``lattice_`` holds the widths (0 for a continuous column; None when no
    column is on a grid), and ``info_["dequantized"]`` the dequantised columns; ``summary()``
    says what was chosen and dequantised. ``sample`` draws from :math:`p`, so its rows spread
    across the cells: round them to the grid for values recorded like the data.

    With ``standardize=True`` the flow is built as :math:`x = \mu + \sigma \odot f(z)`, with
    :math:`\mu, \sigma` the column means and standard deviations of the training rows, held by
    a :class:`Standardization` layer whose log-determinant :math:`\sum_i \log\sigma_i` is part
    of every log-density. A conditional model likewise standardises its context
    (:class:`ContextStandardization`), which does not change the density of :math:`x`.

    The constructor only stores its arguments (as scikit-learn estimators do); the fitted state
    lives in attributes ending in ``_``: ``flow_`` (the
    :class:`~pyro_flows.distributions.NormalizingFlow`, in original units), ``history_`` (a
    :class:`~pyro_flows.training.FitHistory`), ``n_features_in_``, ``feature_names_in_``,
    ``context_dim_``, ``context_names_in_``, ``mean_`` and ``scale_`` (the standardisation, or
    None), ``lattice_`` and ``selection_`` (above), and ``info_`` (a dict of
    JSON-serialisable notes saved with the model).

    Arguments:
        flow: ``"auto"`` (choose by validation, above), or a family of
            :func:`pyro_flows.flows.build` that can score data (``"maf"``,
            ``"affine_coupling"``/``"realnvp"``, ``"masked_spline_autoregressive"``/``"nsf"``,
            ``"spline_coupling"``, ``"spline_autoregressive"``, ``"spline"``, ``"planar"``,
            ``"radial"``, ...).
        num_layers: The number of flow layers; 0 for the base alone (with ``base="gmm"``, a
            Gaussian mixture fitted by EM, with no gradient steps).
        hidden_dims: The hidden sizes of each layer's network, or None for the family's
            default: ``(64, 64)`` where the layers have networks, nothing for the layers that
            have none (``"spline"``, ``"planar"``, ``"radial"``, which refuse ``hidden_dims``).
        standardize: Whether to standardise the columns (and the context) inside the model.
        num_steps: The number of Adam steps.
        batch_size: The minibatch size.
        lr: The peak learning rate (cosine schedule, see :func:`~pyro_flows.training.fit`).
        weight_decay: Adam's L2 penalty on the flow's parameters (helps on small data).
        val_fraction: The fraction of the rows held out for validation and early stopping
            (the best validation parameters are kept), in :math:`[0, 1)`, or None for 25%
            of a table of fewer than 2 000 rows (a choice on a dozen rows would be noise)
            and 10% of a larger one; ignored when ``fit`` is given ``val_X``.
        patience: Stop after this many validation evaluations without improvement, or None.
        eval_every: The number of steps between validation evaluations.
        seed: Seeds the initialisation, the split and the minibatch order, or None.
        progress: Whether to show a tqdm progress bar while fitting.
        dtype: ``"float32"`` or ``"float64"``, the precision of the model.
        flow_kwargs: Further keyword arguments of the family's helper (e.g.
            ``{"count_bins": 8}``); JSON-serialisable, as they are saved.
        base: The base distribution of the flow (in standardised units): ``"normal"``, the
            standard normal :math:`N(0, I)`, or ``"gmm"``, a learnable mixture of
            ``base_components`` Gaussians (:class:`~pyro_flows.bases.GaussianMixture`). The
            mixture is initialised by EM on the training rows pulled back through the
            initial flow, :math:`z = f^{-1}(x)`, so training starts at a fitted Gaussian
            mixture and, with early stopping, keeps the best of it and its refinements. MAF
            and coupling layers then start at the identity (MAF's output layers are zeroed),
            so the model starts at the mixture fitted to the standardised data itself.
        base_components: The number of mixture components :math:`K` of ``base="gmm"``.
        base_covariance: ``"full"`` or ``"diag"``, the mixture's covariances.
        dequantize: ``"auto"`` (dequantise the columns found on a grid, above) or False.
        device: Where to fit and score: ``"cpu"``, ``"auto"`` (CUDA when present),
            ``"cuda"`` or ``"cuda:N"``. The rows stay on the CPU and move there a minibatch
            (or a chunk) at a time; the model file does not record it, so a model fitted on
            a GPU loads on a CPU-only machine (see :meth:`load`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal([100.0, -3.0], [10.0, 0.1], size=(500, 2))
        >>> est = DensityEstimator("maf", num_layers=2, hidden_dims=(16,), num_steps=50, seed=0)
        >>> est.fit(X).score_samples(X[:3]).shape
        (3,)
        >>> est.sample(4, seed=0).shape
        (4, 2)
        >>> gmm = DensityEstimator("maf", num_layers=2, hidden_dims=(16,), num_steps=50,
        ...                        base="gmm", base_components=2, seed=0)
        >>> gmm.fit(X).score_samples(X[:3]).shape
        (3,)
    """

    def __init__(
        self,
        flow: str = "auto",
        num_layers: int = 5,
        hidden_dims: Sequence[int] | None = None,
        standardize: bool = True,
        num_steps: int = 1000,
        batch_size: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        val_fraction: float | None = None,
        patience: int | None = None,
        eval_every: int = 50,
        seed: int | None = None,
        progress: bool = False,
        dtype: str = "float32",
        flow_kwargs: dict[str, Any] | None = None,
        base: str = "normal",
        base_components: int = 1,
        base_covariance: str = "full",
        dequantize: str | bool = "auto",
        device: str = "cpu",
    ) -> None:
        self.flow = flow
        self.num_layers = num_layers
        self.hidden_dims = hidden_dims
        self.standardize = standardize
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.eval_every = eval_every
        self.seed = seed
        self.progress = progress
        self.dtype = dtype
        self.flow_kwargs = flow_kwargs
        self.base = base
        self.base_components = base_components
        self.base_covariance = base_covariance
        self.dequantize = dequantize
        self.device = device

    # -- scikit-learn protocol ----------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Returns the constructor arguments as a dict (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> DensityEstimator:
        """Sets constructor arguments by name; returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r}; expected one of {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k].default]
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- building -----------------------------------------------------------------------------
    def _check_params(self) -> tuple[str, list[int] | None, torch.dtype]:
        if self.flow == _AUTO:
            name = _AUTO
            if (self.base, self.base_components, self.base_covariance) != ("normal", 1, "full"):
                raise ValueError(
                    "flow='auto' chooses the base itself (a normal or a Gaussian-mixture base, "
                    "or the mixture alone); leave base, base_components and base_covariance "
                    "at their defaults, or name a flow family to set them"
                )
        else:
            name, family = lookup_family(self.flow)
            if not family.invertible:
                scorable = sorted(k for k, f in FAMILIES.items() if f.invertible)
                raise ValueError(
                    f"flow {self.flow!r} has no analytic inverse, so it cannot score data; "
                    f"use one of {scorable} or 'auto'"
                )
        check_positive_int(self.num_layers, "num_layers", minimum=0)
        if self.dequantize not in _DEQUANTIZE or self.dequantize is True:
            raise ValueError(f"dequantize must be 'auto' or False, got {self.dequantize!r}")
        hidden = (
            None
            if self.hidden_dims is None
            else check_hidden_dims(list(self.hidden_dims), "hidden_dims")
        )
        check_choice(self.dtype, tuple(_DTYPES), "dtype")
        if not isinstance(self.standardize, bool):
            raise TypeError(f"standardize must be True or False, got {self.standardize!r}")
        if self.flow_kwargs is not None:
            if not isinstance(self.flow_kwargs, dict):
                raise TypeError(f"flow_kwargs must be a dict or None, got {self.flow_kwargs!r}")
            try:
                json.dumps(self.flow_kwargs, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"flow_kwargs must be JSON-serialisable to be saved: {e}"
                ) from None
        check_choice(self.base, _BASES, "base")
        check_positive_int(self.base_components, "base_components")
        if self.base == "normal" and self.base_components != 1:
            raise ValueError(
                f"base_components={self.base_components} needs base='gmm' (the normal base "
                "has one component)"
            )
        check_choice(self.base_covariance, _COVARIANCES, "base_covariance")
        return name, hidden, _DTYPES[self.dtype]

    def _build(
        self,
        input_dim: int,
        context_dim: int | None,
        mean: np.ndarray | None,
        scale: np.ndarray | None,
        context_mean: np.ndarray | None,
        context_scale: np.ndarray | None,
    ) -> NormalizingFlow:
        name, hidden, dtype = self._check_params()
        if name == _AUTO:
            raise ValueError("flow='auto' is resolved by fit; it builds no model by itself")
        if self.num_layers == 0:
            return self._build_base_only(input_dim, context_dim, mean, scale, dtype)
        family = FAMILIES[name]
        if input_dim < (least := family.smallest_dim(context_dim)):
            raise ValueError(
                f"flow={self.flow!r} needs at least {least} columns, got {input_dim}; "
                "for one column use flow='spline' (or 'planar', 'radial'), or give a context"
            )
        if context_dim is not None and family.make_conditional is None:
            conditional = sorted(
                k for k, f in FAMILIES.items() if f.make_conditional and f.invertible
            )
            raise ValueError(
                f"flow={self.flow!r} has no conditional variant, so it cannot take a context; "
                f"use one of {', '.join(conditional)}"
            )
        make = family.make if context_dim is None else family.make_conditional
        if not _accepts(make, "hidden_dims"):
            if hidden is not None:
                kind = "" if context_dim is None else "conditional "
                raise ValueError(
                    f"{kind}flow={self.flow!r} has no hidden layers, so it takes no hidden_dims "
                    f"(got {hidden}); leave hidden_dims=None"
                )
        elif hidden is None:
            hidden = list(_DEFAULT_HIDDEN)
        core = build(
            name,
            input_dim,
            self.num_layers,
            context_dim=context_dim,
            hidden_dims=hidden,
            **(self.flow_kwargs or {}),
        )
        if context_dim is not None and context_mean is not None:
            core = ContextStandardization(
                core, torch.as_tensor(context_mean), torch.as_tensor(context_scale)
            )
        if mean is not None:
            std = Standardization(torch.as_tensor(mean), torch.as_tensor(scale))
            compose = T.Compose if context_dim is None else T.ConditionalCompose
            core = compose([core, std])
        base = None
        if self.base == "gmm":
            base = GaussianMixture(input_dim, self.base_components, self.base_covariance)
        return NormalizingFlow(
            core, input_dim, context_dim=context_dim, base=base, standardize=False
        ).to(dtype)

    def _build_base_only(
        self,
        input_dim: int,
        context_dim: int | None,
        mean: np.ndarray | None,
        scale: np.ndarray | None,
        dtype: torch.dtype,
    ) -> NormalizingFlow:
        """The model of ``num_layers=0``: the base alone, behind the standardisation."""
        if context_dim is not None:
            raise ValueError(
                "num_layers=0 (the base alone) cannot take a context: it has no conditional "
                "layer; use num_layers >= 1"
            )
        if mean is None:
            std = Standardization.identity(input_dim)
        else:
            std = Standardization(torch.as_tensor(mean), torch.as_tensor(scale))
        base = None
        if self.base == "gmm":
            base = GaussianMixture(input_dim, self.base_components, self.base_covariance)
        return NormalizingFlow(std, input_dim, base=base, standardize=False).to(dtype)

    # -- fitting ------------------------------------------------------------------------------
    @staticmethod
    def _start_at_identity(model: NormalizingFlow) -> None:
        """Zeroes the output layer of every MAF layer's MADE: shift 0, log-scale 0, identity.

        Coupling layers start at the identity already; other layers keep their random start,
        which the base's EM then sees through :math:`z = f^{-1}(x)`.
        """
        with torch.no_grad():
            for m in model.transform.modules():
                if isinstance(m, T.MaskedAutoregressive | T.ConditionalMaskedAutoregressive):
                    last = m.network.layers[-1]
                    last.weight.zero_()
                    last.bias.zero_()

    def _initialize_base(
        self, model: NormalizingFlow, x: np.ndarray, c: np.ndarray | None
    ) -> None:
        """Fits the mixture base by EM to the training rows pulled back through the flow."""
        dtype = next(iter(model.buffers())).dtype
        with torch.no_grad():
            xs = torch.as_tensor(x, dtype=dtype)
            cs = None if c is None else torch.as_tensor(c, dtype=dtype)
            z = torch.cat(
                [
                    model.inverse(xs[i : i + _CHUNK], None if cs is None else cs[i : i + _CHUNK])
                    for i in range(0, xs.shape[0], _CHUNK)
                ]
            )
        model.base.initialize(z, seed=self.seed)

    def fit(
        self,
        X: Any,
        context: Any = None,
        *,
        val_X: Any = None,
        val_context: Any = None,
        feature_names: Sequence[str] | None = None,
        context_names: Sequence[str] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        resume: str | os.PathLike | bool | None = None,
    ) -> DensityEstimator:
        """Fits the flow to the rows of ``X`` (given the rows of ``context``); returns ``self``.

        Arguments:
            X: The data, shape ``(num_rows, num_features)``: a numpy array, a tensor or a
                pandas DataFrame (whose column names are kept); or a table larger than the
                memory, a memmap or a :class:`~pyro_flows.data.MemmapTable` (with its context
                columns), read a minibatch at a time: split by ``val_fraction``, standardised
                from one streaming pass, with ``flow="auto"`` and ``base="gmm"`` refused and
                no lattice dequantisation (they need every row in memory).
            context: The conditioning values, one row per row of ``X``, or None.
            val_X: Explicit validation rows (then ``val_fraction`` is ignored).
            val_context: The context rows of ``val_X``.
            feature_names: Names of the columns of ``X`` (saved with the model).
            context_names: Names of the columns of ``context``.
            checkpoint: A checkpoint file for the training run (see
                :func:`~pyro_flows.training.fit`); needs a named ``flow``, not ``"auto"``,
                which fits several candidates.
            checkpoint_every: The number of steps between checkpoints.
            resume: A checkpoint file to continue from, or True for ``checkpoint`` when it
                exists.

        Raises:
            ValueError: For NaN/inf values, a constant column, too few rows for the
                validation split, or arguments that do not fit together; the message names
                the column or argument.
        """
        self._check_params()
        if checkpoint is not None and self.flow == _AUTO:
            raise ValueError(
                "checkpoint needs a named flow family: flow='auto' fits several candidates"
            )
        self._train_options = {
            "device": resolve_device(self.device),
            "checkpoint": checkpoint,
            "checkpoint_every": checkpoint_every,
            "resume": resume,
        }
        if isinstance(X, np.memmap | MemmapTable):  # a table larger than the memory
            if context is not None or val_X is not None:
                raise ValueError(
                    "a memory-mapped X carries its context columns (MemmapTable) and is split "
                    "by val_fraction: context and val_X must be None"
                )
            return fit_memmap(
                self,
                X,
                small_rows=_AUTO_SMALL,
                feature_names=None if feature_names is None else list(feature_names),
                context_names=None if context_names is None else list(context_names),
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
        x, names = _as_table(X, "X")
        names = _column_names(feature_names, x.shape[1], "feature_names") or names
        _check_finite_columns(x, "X", names)
        c = cnames = None
        if context is not None:
            c, cnames = _as_table(context, "context")
            cnames = _column_names(context_names, c.shape[1], "context_names") or cnames
            _check_finite_columns(c, "context", cnames)
            if c.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context must have one row per row of X ({x.shape[0]}), got {c.shape[0]}"
                )
        if x.shape[0] < 2:
            raise ValueError(f"too few rows to fit: X has {x.shape[0]} row(s), need >= 2")
        _check_not_constant(x, "X", names, "")
        _warn_discrete(x, "X", names, dequantized=self.dequantize == _AUTO)

        if val_X is not None:
            xt, ct = x, c
            xv, vnames = _as_table(val_X, "val_X")
            xv = _match_columns(xv, vnames, names if vnames else None, "val_X", "X columns")
            _check_finite_columns(xv, "val_X", names)
            if xv.shape[1] != x.shape[1]:
                raise ValueError(f"val_X must have {x.shape[1]} columns, got {xv.shape[1]}")
            cv = None
            if (val_context is None) != (context is None):
                raise ValueError("val_context must be given exactly when context is given")
            if val_context is not None:
                cv, _ = _as_table(val_context, "val_context")
                _check_finite_columns(cv, "val_context", cnames)
                if cv.shape != (xv.shape[0], c.shape[1]):
                    raise ValueError(
                        f"val_context must have shape ({xv.shape[0]}, {c.shape[1]}), "
                        f"got {cv.shape}"
                    )
        else:
            if val_context is not None:
                raise ValueError("val_context was given without val_X")
            frac = self.val_fraction
            if frac is None:
                frac = 0.25 if x.shape[0] < _AUTO_SMALL else 0.1
            if not (isinstance(frac, int | float) and 0 <= frac < 1):
                raise ValueError(f"val_fraction must be in [0, 1), got {frac!r}")
            num_val = int(frac * x.shape[0])
            if frac > 0 and num_val < 1:
                raise ValueError(
                    f"too few rows for a validation split: val_fraction={frac} of "
                    f"{x.shape[0]} rows leaves no validation row; it needs at least "
                    f"{math.ceil(1 / frac)} rows, or val_fraction=0"
                )
            perm = np.random.default_rng(self.seed).permutation(x.shape[0])
            val_idx, train_idx = perm[:num_val], perm[num_val:]
            xt, xv = x[train_idx], (x[val_idx] if num_val else None)
            ct = None if c is None else c[train_idx]
            cv = None if (c is None or not num_val) else c[val_idx]
        if xt.shape[0] < 2:
            raise ValueError(f"too few rows to fit: {xt.shape[0]} training row(s), need >= 2")
        if self.patience is not None and xv is None:
            raise ValueError("patience needs validation rows: set val_fraction > 0 or val_X")
        if self.base == "gmm" and xt.shape[0] < self.base_components:
            raise ValueError(
                f"base_components={self.base_components} needs at least "
                f"{self.base_components} training rows, got {xt.shape[0]}"
            )

        mean = scale = cmean = cscale = None
        if self.standardize:
            _check_not_constant(xt, "X", names, " on the training rows")
            with np.errstate(over="ignore", invalid="ignore"):
                mean, scale = xt.mean(0), xt.std(0)
            _check_scale(mean, scale, xt, "X", names)
            if c is not None:
                with np.errstate(over="ignore", invalid="ignore"):
                    cmean, cscale = ct.mean(0), ct.std(0)
                _check_scale(cmean, cscale, ct, "context", cnames)
                cscale = np.where(cscale > 0, cscale, 1.0)  # a constant context is harmless

        widths = np.zeros(x.shape[1])
        if self.dequantize == _AUTO:
            widths = lattice_widths(np.concatenate([xt, xv]) if xv is not None else xt)
        data = _FitData(xt, ct, xv, cv, mean, scale, cmean, cscale, widths)
        with _seeded(self.seed):
            if self.flow == _AUTO:
                model, history, selection = self._fit_auto(data)
            else:
                model, history = self._fit_one(self, data)
                selection = None
        model.eval()
        self.flow_ = model.to(self._train_options["device"])
        self.history_ = history
        self.n_features_in_ = x.shape[1]
        self.feature_names_in_ = names
        self.context_dim_ = None if c is None else c.shape[1]
        self.context_names_in_ = cnames
        self.mean_, self.scale_ = mean, scale
        self.context_mean_, self.context_scale_ = cmean, cscale
        self.lattice_ = widths if widths.any() else None
        self.selection_ = selection
        self.info_ = {"num_train": int(xt.shape[0]), "num_val": 0 if xv is None else len(xv)}
        if self.lattice_ is not None:
            self.info_["dequantized"] = {
                _describe(names, j).strip("'"): float(widths[j]) for j in np.flatnonzero(widths)
            }
        if selection is not None:
            self.info_["selection"] = selection
        return self

    def _fit_one(
        self,
        est: DensityEstimator,
        d: _FitData,
        eval_every: int | None = None,
        base: GaussianMixture | None = None,
    ) -> tuple[NormalizingFlow, FitHistory]:
        """Builds the model of ``est``'s settings and fits it to ``d``.

        The flow's parameters are fitted by Adam; a base alone (``num_layers=0``) by EM, or
        not at all for a normal base. A mixture ``base`` (in standardised units) is copied
        into the model's instead of fitting one by EM.
        """
        context_dim = None if d.ct is None else d.ct.shape[1]
        model = est._build(d.xt.shape[1], context_dim, d.mean, d.scale, d.cmean, d.cscale)
        if est.base == "gmm":
            if est.num_layers > 0:
                self._start_at_identity(model)
            if base is not None:
                model.base.load_state_dict(base.state_dict())
            else:
                rows, ctx = _dequantised_rows(d.xt, d.ct, d.widths, self.seed)
                est._initialize_base(model, rows, ctx)
        if est.num_layers == 0:  # nothing to train by gradient: the base is fitted (or fixed)
            nll = None if d.xv is None else self._nll(model, d.xv, d.cv, d.widths)
            return model, FitHistory(
                val_steps=[] if nll is None else [0],
                val_nll=[] if nll is None else [nll],
                best_step=None if nll is None else 0,
                best_val_nll=nll,
            )
        trained: torch.nn.Module = model
        if d.widths.any():
            num_val = 0 if d.xv is None else d.xv.shape[0]
            draws = max(1, min(_DEQUANT_DRAWS, 4096 // max(num_val, 1)))
            trained = LatticeDequantization(model, torch.as_tensor(d.widths), num_draws=draws)
        history = fit_model(
            trained,
            d.xt,
            context=d.ct,
            val_data=d.xv,
            val_context=d.cv,
            val_fraction=0.0,
            num_steps=est.num_steps,
            batch_size=est.batch_size,
            lr=est.lr,
            weight_decay=est.weight_decay,
            patience=est.patience,
            eval_every=est.eval_every if eval_every is None else eval_every,
            progress=est.progress,
            seed=est.seed,
            **getattr(self, "_train_options", {}),
        )
        # on the CPU again: the candidates of flow="auto" are compared there
        return model.cpu(), history

    @staticmethod
    def _nll(
        model: NormalizingFlow, x: np.ndarray, c: np.ndarray | None, widths: np.ndarray
    ) -> float:
        """The mean negative log-density of the rows ``x`` (dequantised as in scoring)."""
        scorer = _scorer(model, widths)
        dtype = next(iter(model.buffers())).dtype
        with torch.no_grad():
            xs = torch.as_tensor(x, dtype=dtype)
            cs = None if c is None else torch.as_tensor(c, dtype=dtype)
            lp = torch.cat(
                [
                    scorer.log_prob(xs[i : i + _CHUNK], None if cs is None else cs[i : i + _CHUNK])
                    for i in range(0, xs.shape[0], _CHUNK)
                ]
            )
        return float(-lp.double().mean())

    def _auto_flow_params(self, num_rows: int, input_dim: int) -> dict[str, Any]:
        """The family, sizes and regularisation of the flows that ``flow="auto"`` tries."""
        small = num_rows < _AUTO_SMALL
        hidden = self.hidden_dims
        if hidden is None:
            hidden = (32, 32) if small else tuple(default_hidden_dims(input_dim))
        return {
            "flow": "maf" if input_dim >= 2 else "spline",
            "num_layers": max(self.num_layers, 1),
            "hidden_dims": None if input_dim < 2 else list(hidden),
            "weight_decay": max(self.weight_decay, 1e-3 if small else 0.0),
            "patience": self.patience if self.patience is not None else 20,
        }

    def _fit_auto(self, d: _FitData) -> tuple[NormalizingFlow, FitHistory, dict[str, Any]]:
        """Fits the candidates of ``flow="auto"`` and keeps the best on the validation rows.

        The candidates are a Gaussian mixture (K = 1..5, full or diagonal), a flow on the best
        of them as its base, and a flow on a normal base.
        """
        num_rows, input_dim = d.xt.shape
        flow = self._auto_flow_params(num_rows, input_dim)
        eval_every = min(self.eval_every, 10)
        if d.xv is None:  # nothing to stop early on
            flow["patience"] = self.patience
        if d.ct is not None or d.xv is None:
            # A mixture takes no context; without validation rows there is nothing to choose by.
            est = self._resolved(flow)
            model, history = self._fit_one(est, d, eval_every)
            why = "a context" if d.ct is not None else "no validation rows"
            return (
                model,
                history,
                {
                    "chosen": "flow",
                    "params": flow,
                    "candidates": {},
                    "reason": f"with {why} only the flow is fitted",
                },
            )
        mixtures = [
            {"num_layers": 0, "base": "gmm", "base_components": k, "base_covariance": cov}
            for k in _AUTO_COMPONENTS
            for cov in _AUTO_COVARIANCES
        ]
        folds = self._mixture_folds(d)
        smallest = min(f.xt.shape[0] for f in folds)
        mixtures = [m for m in mixtures if m["base_components"] <= smallest]
        # out-of-fold log-densities of every mixture, shape (rows, mixtures)
        held_out = np.concatenate(
            [
                np.stack(
                    [
                        self._scores(self._fit_one(self._resolved({**flow, **m}), f)[0], f)
                        for m in mixtures
                    ],
                    1,
                )
                for f in folds
            ]
        )
        weights = _stacking_weights(held_out)
        candidates = {
            f"mixture K={m['base_components']} {m['base_covariance']}": float(
                -held_out[:, j].mean()
            )
            for j, m in enumerate(mixtures)
        }
        candidates["stacked mixtures"] = float(-_log_mix(held_out, weights).mean())

        def stacked(rows: _FitData) -> GaussianMixture:
            used = [(w, m) for w, m in zip(weights, mixtures, strict=True) if w > 0]
            fitted = [self._fit_one(self._resolved({**flow, **m}), rows)[0].base for _, m in used]
            return _combine_mixtures(fitted, [w for w, _ in used])

        base = stacked(d)
        mix = {"base": "gmm", "base_components": base.num_components, "base_covariance": "full"}
        fits = {
            "mixture": ({**flow, **mix, "num_layers": 0}, None),
            "flow on mixture": ({**flow, **mix}, eval_every),
            "flow": (flow, eval_every),
        }
        results, rows = {}, {}
        for name, (params, every) in fits.items():
            model, history = self._fit_one(
                self._resolved(params), d, every, base if name != "flow" else None
            )
            rows[name] = self._scores(model, d)
            candidates[name] = float(-rows[name].mean())
            results[name] = (params, model, history)
        # A more complex model replaces a simpler one only when it is better on the
        # validation rows by more than two standard errors of the paired difference: on a
        # few dozen rows (which also stopped the flows early) a smaller gap is noise.
        chosen = "mixture"
        for name in ("flow on mixture", "flow"):
            gain = rows[name] - rows[chosen]
            se = gain.std(ddof=1) / math.sqrt(len(gain)) if len(gain) > 1 else math.inf
            if gain.mean() > 2 * se:
                chosen = name
        params, model, history = results[chosen]
        refit = chosen == "mixture"
        if refit:  # EM on every row (training and validation), as a GMM user would
            both = _FitData(**{**vars(d), "xt": np.concatenate([d.xt, d.xv])})
            base = stacked(both)
            params = {**params, "base_components": base.num_components}
            model, _ = self._fit_one(self._resolved(params), both, None, base)
            nll = candidates["mixture"]
            history = FitHistory(val_steps=[0], val_nll=[nll], best_step=0, best_val_nll=nll)
        return (
            model,
            history,
            {
                "chosen": chosen,
                "params": params,
                "candidates": {k: round(v, 4) for k, v in candidates.items()},
                "stacking_weights": {
                    f"K={m['base_components']} {m['base_covariance']}": round(float(w), 4)
                    for w, m in zip(weights, mixtures, strict=True)
                    if w > 0
                },
                "refit_on_all_rows": refit,
            },
        )

    def _scores(self, model: NormalizingFlow, d: _FitData) -> np.ndarray:
        """The log-density of each validation row of ``d`` (dequantised as in scoring)."""
        scorer = _scorer(model, d.widths)
        dtype = next(iter(model.buffers())).dtype
        with torch.no_grad():
            x = torch.as_tensor(d.xv, dtype=dtype)
            lp = torch.cat([scorer.log_prob(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])
        return lp.double().numpy()

    def _mixture_folds(self, d: _FitData) -> list[_FitData]:
        """The splits that choose the mixture's size and covariances.

        5-fold cross-validation on every row of a small table; the validation rows otherwise
        (with EM on at most 4 096 training rows).
        """
        rows = np.concatenate([d.xt, d.xv])
        if rows.shape[0] < _AUTO_CV_ROWS:
            order = np.random.default_rng(self.seed).permutation(rows.shape[0])
            parts = np.array_split(order, _AUTO_FOLDS)
            return [
                _FitData(**{**vars(d), "xt": rows[np.setdiff1d(order, part)], "xv": rows[part]})
                for part in parts
            ]
        if d.xt.shape[0] <= _AUTO_EM_ROWS:
            return [d]
        keep = np.random.default_rng(self.seed).permutation(d.xt.shape[0])[:_AUTO_EM_ROWS]
        return [_FitData(**{**vars(d), "xt": d.xt[keep]})]

    def _resolved(self, params: dict[str, Any]) -> DensityEstimator:
        """An estimator with this one's settings and ``params`` (a choice of ``flow="auto"``)."""
        return type(self)(**{**self.get_params(), **params})

    # -- using a fitted model -----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "flow_"):
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call fit(X) or load(path) first"
            )

    def summary(self) -> str:
        """Says what ``fit`` did, in three lines: the model, the dequantised columns, the rows.

        The model line names what ``flow="auto"`` kept and the validation NLL of each
        finalist; the second line names the columns found on a grid and their widths.

        Example:
            >>> rng = np.random.default_rng(0)
            >>> X = np.c_[rng.normal(size=200), rng.integers(0, 50, 200)]
            >>> est = DensityEstimator(num_steps=20, seed=0).fit(X)
            >>> print(est.summary().splitlines()[1])
            dequantized: 1 column on a grid, with uniform noise across each cell: 1 (width 1)
        """
        self._check_fitted()
        sel = self.selection_
        if sel is None:
            layers = f"{self.num_layers} layer(s) of {self.flow}"
            model = f"model: {layers}" if self.num_layers else "model: the base alone"
            if self.base == "gmm":
                model += f", on a mixture of {self.base_components} Gaussians"
        else:
            k = sel["params"].get("base_components")
            what = {
                "mixture": f"a stacked mixture of {k} Gaussians",
                "flow on mixture": f"a {sel['params']['flow']} flow on a mixture of {k} "
                "Gaussians",
                "flow": f"a {sel['params']['flow']} flow on a normal base",
            }[sel["chosen"]]
            scores = ", ".join(
                f"{name} {sel['candidates'][name]:.4g}"
                for name in ("mixture", "flow on mixture", "flow")
                if name in sel["candidates"]
            )
            model = f"model: {what} (flow='auto'"
            model += f"; validation NLL: {scores})" if scores else f"; {sel['reason']})"
        deq = self.info_.get("dequantized", {})
        if deq:
            cols = ", ".join(f"{name} (width {w:.4g})" for name, w in deq.items())
            plural = "column" if len(deq) == 1 else "columns"
            grid = f"dequantized: {len(deq)} {plural} on a grid, with uniform noise across "
            grid += f"each cell: {cols}"
        else:
            grid = "dequantized: no column (none is on a grid)"
            if self.dequantize is False:
                grid = "dequantized: no column (dequantize=False)"
        rows = f"rows: {self.info_['num_train']} training, {self.info_['num_val']} validation"
        return "\n".join([model, grid, rows])

    def _fitted_names(self, context: bool = False) -> list[str] | None:
        """The names to match a DataFrame's columns to: None when they stand for positions."""
        if self.info_.get("header") is False:  # a headerless file: names are positions
            return None
        return self.context_names_in_ if context else self.feature_names_in_

    def _device(self) -> torch.device:
        """The device of the fitted flow, where its inputs go."""
        return next(iter(self.flow_.buffers())).device

    def _inputs(self, X: Any, context: Any) -> tuple[Tensor, Tensor | None]:
        self._check_fitted()
        dtype = next(iter(self.flow_.buffers())).dtype
        x, given = _as_table(X, "X")
        x = _match_columns(x, given, self._fitted_names(), "X", "feature_names_in_")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} columns, but the model was fitted on {self.n_features_in_}"
            )
        _check_finite_columns(x, "X", self.feature_names_in_)
        c = self._context(context, x.shape[0])
        return torch.as_tensor(x, dtype=dtype, device=self._device()), c

    def _context(self, context: Any, num_rows: int | None) -> Tensor | None:
        dtype = next(iter(self.flow_.buffers())).dtype
        if self.context_dim_ is None:
            if context is not None:
                raise ValueError("context was given, but the model was fitted without one")
            return None
        if context is None:
            raise ValueError(
                f"the model is conditional: pass a context with {self.context_dim_} columns"
            )
        if getattr(context, "columns", None) is not None and not isinstance(
            context, np.ndarray | Tensor
        ):
            c, given = _as_table(context, "context")
            c = _match_columns(
                c, given, self._fitted_names(context=True), "context", "context_names_in_"
            )
        else:
            c = np.asarray(context.detach().cpu() if isinstance(context, Tensor) else context)
        if c.ndim == 1:  # one context for every row
            if c.shape[0] != self.context_dim_:
                raise ValueError(
                    f"a 1-D context must have the model's {self.context_dim_} context values, "
                    f"got shape {c.shape}; for one context column per row use c.reshape(-1, 1)"
                )
            c = c[None]
        c, _ = _as_table(c, "context")
        if c.shape[1] != self.context_dim_:
            raise ValueError(
                f"context has {c.shape[1]} columns, but the model was fitted on "
                f"{self.context_dim_}"
            )
        _check_finite_columns(c, "context", self.context_names_in_)
        if num_rows is not None and c.shape[0] not in (1, num_rows):
            raise ValueError(f"context must have 1 or {num_rows} rows, got {c.shape[0]}")
        return torch.as_tensor(c, dtype=dtype, device=self._device())

    def log_prob(self, X: Any, context: Any = None) -> Tensor:
        r"""Returns :math:`\log q(x \mid c)` per row as a tensor that carries gradients.

        Arguments:
            X: The rows, shape ``(num_rows, num_features)``.
            context: The context rows, shape ``(num_rows, C)``, or one context for every row,
                shape ``(C,)``; None for an unconditional model.
        """
        x, c = self._inputs(X, context)
        return _scorer(self.flow_, self.lattice_).log_prob(x, c)

    def score_samples(self, X: Any, context: Any = None) -> np.ndarray:
        r"""Returns :math:`\log q(x \mid c)` per row, in nats, in the data's own units.

        A float64 array of shape ``(num_rows,)``, computed without gradients in chunks.
        """
        x, c = self._inputs(X, context)
        scorer = _scorer(self.flow_, self.lattice_)
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], _CHUNK):
                ci = None if c is None else (c if c.shape[0] == 1 else c[i : i + _CHUNK])
                out.append(scorer.log_prob(x[i : i + _CHUNK], ci).double().cpu())
        return torch.cat(out).numpy()

    def score(self, X: Any, context: Any = None) -> float:
        """Returns the mean log-likelihood of the rows (the negative mean NLL), in nats."""
        return float(self.score_samples(X, context).mean())

    def sample(
        self, n_samples: int = 1, context: Any = None, seed: int | None = None
    ) -> np.ndarray:
        """Draws rows from the fitted density, in the data's own units.

        Arguments:
            n_samples: How many rows (per context row).
            context: None for an unconditional model; for a conditional one, a context of
                shape ``(C,)``, giving an array of shape ``(n_samples, D)``, or ``(m, C)``,
                giving ``(n_samples, m, D)``.
            seed: Seeds the draw (without changing torch's global generator), or None.

        Rows are drawn 65 536 at a time (with a progress bar when ``progress`` is set), so a
        draw larger than memory allows for the flow's activations still runs.
        """
        self._check_fitted()
        check_positive_int(n_samples, "n_samples")
        c = self._context(context, None)
        if c is not None and np.ndim(context) == 1:
            c = c[0]
        scorer = _scorer(self.flow_, self.lattice_)
        # In chunks: a flow's activations for millions of rows at once would not fit in memory.
        chunks = [min(_SAMPLE_CHUNK, n_samples - i) for i in range(0, n_samples, _SAMPLE_CHUNK)]
        out = None
        with (
            _seeded(seed),
            torch.no_grad(),
            progress_bar(len(chunks), "sample", self.progress and len(chunks) > 1) as bar,
        ):
            start = 0
            for size in chunks:
                x = scorer.sample((size,), c).double().cpu().numpy()
                if out is None:
                    out = np.empty((n_samples, *x.shape[1:]))
                out[start : start + size] = x
                start += size
                bar.update()
        return out

    # -- persistence --------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        from . import __version__

        def floats(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in a]

        params = self.get_params()
        params.pop("device")  # where it ran, not what it is: a file loads on any machine
        if params["hidden_dims"] is not None:
            params["hidden_dims"] = list(params["hidden_dims"])
        return {
            "library_version": __version__,
            "torch_version": torch.__version__,
            "params": params,
            "input_dim": self.n_features_in_,
            "context_dim": self.context_dim_,
            "feature_names": self.feature_names_in_,
            "context_names": self.context_names_in_,
            "standardization": {
                "mean": floats(self.mean_),
                "scale": floats(self.scale_),
                "context_mean": floats(self.context_mean_),
                "context_scale": floats(self.context_scale_),
            },
            "history": asdict(self.history_),
            "info": self.info_,
            "lattice": floats(self.lattice_),
            "selection": self.selection_,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes the fitted model to ``path`` (a ``torch.save`` file), atomically.

        The file holds the flow's parameters and buffers and, as JSON: the constructor
        arguments (family, sizes, training settings), the column names, the standardisation,
        the training history, ``info_``, the library and torch versions, and the format
        version :data:`FORMAT_VERSION`, all covered by a SHA-256 checksum. It is written to a
        temporary file that is then renamed, so ``path`` never holds a partial model.
        """
        self._check_fitted()
        payload = self._payload()
        _atomic_write(path, lambda f: torch.save(payload, f))

    def _payload(self) -> dict[str, Any]:
        """The contents of a model file: format header, metadata, tensors and checksum."""
        meta = json.dumps(self._meta(), sort_keys=True)
        state = {k: v.detach().cpu().clone() for k, v in self.flow_.state_dict().items()}
        return {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": meta,
            "state_dict": state,
            "sha256": _digest(meta, state),
        }

    def __getstate__(self) -> dict[str, Any]:
        """Pickles a fitted estimator as its model file's bytes (the flow's caches are left out).

        A fitted flow may hold closures in its layers' caches, which ``pickle`` cannot write;
        the model file holds everything needed to rebuild it, identically.
        """
        state = {k: v for k, v in self.__dict__.items() if k in self._param_names()}
        if hasattr(self, "flow_"):
            buffer = io.BytesIO()
            torch.save(self._payload(), buffer)
            state["_model_file"] = buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds an estimator pickled by :meth:`__getstate__`."""
        state = dict(state)
        model_file = state.pop("_model_file", None)
        self.__dict__.update(state)
        if model_file is not None:
            payload = torch.load(io.BytesIO(model_file), map_location="cpu", weights_only=True)
            fitted = type(self)._from_payload(payload, "pickled DensityEstimator")
            self.__dict__.update(
                {k: v for k, v in fitted.__dict__.items() if k not in self._param_names()}
            )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> DensityEstimator:
        """Reads a model written by :meth:`save` onto ``device`` (a GPU-fitted one too).

        Arguments:
            path: The model file.
            device: Where to score and sample: ``"cpu"``, ``"auto"``, ``"cuda"``, ...

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ModelFileError: If the file is not a pyro_flows model, is corrupt (its checksum
                does not match), or was written in another format version; the message says
                which.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.is_dir():
            raise ModelFileError(f"{path}: is a directory, not a model file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for foreign or truncated files
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(
                f"{path}: not a pyro_flows model file, or a corrupt one ({reason[:200]})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ModelFileError(
                f"{path}: not a pyro_flows model file (a torch file without the "
                "DensityEstimator header; was it written by DensityEstimator.save?)"
            )
        est = cls._from_payload(payload, str(path))
        est.flow_.to(resolve_device(device))
        est.device = device
        return est

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], path: str) -> DensityEstimator:
        """Checks and rebuilds a model file's contents; ``path`` names it in messages."""
        from . import __version__

        version = payload.get("format_version")
        if version not in _READABLE_VERSIONS:
            written_by = "an unknown version"
            with contextlib.suppress(Exception):
                written_by = json.loads(payload["meta"])["library_version"]
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise ModelFileError(
                f"{path}: model file format version {version!r} (written by pyro_flows "
                f"{written_by}) cannot be read by pyro_flows {__version__}, which reads "
                f"versions {', '.join(map(str, _READABLE_VERSIONS))}; "
                + ("upgrade pyro_flows" if newer else "refit the model with this version")
            )
        meta_text, state = payload.get("meta"), payload.get("state_dict")
        if (
            not isinstance(meta_text, str)
            or not isinstance(state, dict)
            or not all(isinstance(v, Tensor) for v in state.values())
        ):
            raise ModelFileError(f"{path}: corrupt model file (missing or malformed sections)")
        if payload.get("sha256") != _digest(meta_text, state):
            raise ModelFileError(
                f"{path}: corrupt model file: its checksum does not match its contents"
            )
        try:
            meta = json.loads(meta_text)
            est = cls(**meta["params"])
            if "dequantize" not in meta["params"]:  # versions 1 and 2: no lattice, a family
                est.dequantize = False
            selection = meta.get("selection")
            builder = est if selection is None else est._resolved(selection["params"])
            sd = meta["standardization"]

            def arr(v: list[float] | None) -> np.ndarray | None:
                return None if v is None else np.asarray(v, dtype=np.float64)

            # the initial values are overwritten; leave torch's RNG alone. A widened MADE
            # warned when it was fitted: loading it again is not news.
            with _seeded(0), warnings.catch_warnings():
                warnings.simplefilter("ignore", HiddenWidthWarning)
                model = builder._build(
                    meta["input_dim"],
                    meta["context_dim"],
                    arr(sd["mean"]),
                    arr(sd["scale"]),
                    arr(sd["context_mean"]),
                    arr(sd["context_scale"]),
                )
            model.load_state_dict(state, strict=True)
        except Exception as e:
            raise ModelFileError(
                f"{path}: written by pyro_flows {meta_text and _safe_version(meta_text)} but "
                f"it does not match the model pyro_flows {__version__} builds from its "
                f"settings ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
            ) from None
        model.eval()
        est.flow_ = model
        est.history_ = _history_from_dict(meta["history"])
        est.n_features_in_ = meta["input_dim"]
        est.feature_names_in_ = meta["feature_names"]
        est.context_dim_ = meta["context_dim"]
        est.context_names_in_ = meta["context_names"]
        est.mean_, est.scale_ = arr(sd["mean"]), arr(sd["scale"])
        est.context_mean_, est.context_scale_ = arr(sd["context_mean"]), arr(sd["context_scale"])
        est.info_ = meta.get("info") or {}
        est.lattice_ = arr(meta.get("lattice"))
        est.selection_ = selection
        est.library_version_ = meta["library_version"]
        est.device = "cpu"
        return est


def _safe_version(meta_text: str) -> str:
    try:
        return str(json.loads(meta_text)["library_version"])
    except Exception:
        return "an unknown version"
