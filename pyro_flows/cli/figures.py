"""The figure of ``pyro-flows plot``: a corner plot of data against the model, and the fit.

The corner plot has the marginal densities on its diagonal, the data and model samples as
points below it and their 2-D density contours above it (the smallest regions holding 50% and
90% of each, from a Gaussian kernel density estimate on a grid); under it, the whole training
curve and a zoom on its last three quarters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from ..training import FitHistory

__all__ = ["MAX_COLUMNS", "corner_figure", "highest_density_levels"]

#: The most columns a corner plot draws legibly; choose among more with ``--columns``.
MAX_COLUMNS = 20
_DATA, _MODEL = "C0", "C1"
_MASSES = (0.9, 0.5)  # contour levels: the regions holding this much of the density
_GRID = 64  # bins per axis of the 2-D densities
_POINTS = 1500  # at most this many points of each kind in a scatter panel


def highest_density_levels(density: np.ndarray, masses: tuple[float, ...]) -> list[float]:
    r"""The density values :math:`t_m` whose upper sets hold the masses ``masses``.

    .. math:: \sum_{g:\, p_g \ge t_m} p_g = m \sum_g p_g

    Arguments:
        density: Non-negative values on a grid.
        masses: Fractions in (0, 1).

    Example:
        >>> highest_density_levels(np.array([4.0, 3.0, 2.0, 1.0]), (0.7, 0.4))
        [3.0, 4.0]
    """
    p = np.sort(density.ravel())[::-1]
    cum = np.cumsum(p) / p.sum()
    return [float(p[min(int(np.searchsorted(cum, m)), p.size - 1)]) for m in masses]


def _bandwidth(v: np.ndarray) -> float:
    """Scott's rule for one coordinate, robust to outliers (the smaller of std and IQR/1.34)."""
    q75, q25 = np.percentile(v, [75, 25])
    spread = min(np.std(v), (q75 - q25) / 1.34) or np.std(v) or 1.0
    return float(spread * v.size ** (-1 / 5))


def _kde_1d(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A Gaussian kernel density estimate of ``v`` on ``grid`` (binned, then smoothed)."""
    from scipy.ndimage import gaussian_filter1d

    step = grid[1] - grid[0]
    edges = np.append(grid - step / 2, grid[-1] + step / 2)
    counts, _ = np.histogram(v, edges)
    smooth = gaussian_filter1d(counts.astype(float), _bandwidth(v) / step, mode="constant")
    return smooth / (v.size * step)


def _kde_2d(a: np.ndarray, b: np.ndarray, ra: tuple, rb: tuple) -> np.ndarray:
    """A Gaussian kernel density estimate of the points ``(a, b)`` on a ``_GRID`` grid."""
    from scipy.ndimage import gaussian_filter

    counts, ea, eb = np.histogram2d(a, b, _GRID, range=[ra, rb])
    n = a.size
    sigma = [
        max(0.8, _bandwidth(a) * n ** (1 / 5 - 1 / 6) / (ea[1] - ea[0])),
        max(0.8, _bandwidth(b) * n ** (1 / 5 - 1 / 6) / (eb[1] - eb[0])),
    ]
    return gaussian_filter(counts, sigma, mode="constant").T  # rows: b, columns: a


def _limits(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([x, s])
    lo, hi = np.percentile(both, 0.5, axis=0), np.percentile(both, 99.5, axis=0)
    lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))  # every data point shows
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    return lo - pad, hi + pad


def _thin(v: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return v if v.shape[0] <= n else v[rng.choice(v.shape[0], n, replace=False)]


def _short(name: str, room: float, size: float) -> str:
    """``name``, cut with an ellipsis to about ``room`` inches of text of ``size`` points."""
    fit = max(4, int(room * 72 / (0.6 * size)))
    return name if len(name) <= fit else name[: fit - 1] + "\u2026"


def _corner(grid: GridSpec, x: np.ndarray, s: np.ndarray, names: list[str], panel: float) -> None:
    k = x.shape[1]
    lo, hi = _limits(x, s)
    rng = np.random.default_rng(0)
    xp, sp = _thin(x, _POINTS, rng), _thin(s, _POINTS, rng)
    # data points on top of the model's, larger when there are few of them
    size, alpha = (7.0, 0.9) if xp.shape[0] <= 200 else (3.0, 0.5)
    label_size = 9 if k <= 6 else (7 if k <= 12 else 5.5)
    axes = grid.subplots(squeeze=False)
    for i in range(k):
        for j in range(k):
            ax: Axes = axes[i, j]
            ax.set_xlim(lo[j], hi[j])
            if i == j:
                grid = np.linspace(lo[i], hi[i], 200)
                ax.hist(
                    x[:, i],
                    np.linspace(lo[i], hi[i], 31),
                    density=True,
                    color=_DATA,
                    alpha=0.25,
                    lw=0,
                )
                ax.plot(grid, _kde_1d(x[:, i], grid), color=_DATA, lw=1.2)
                ax.plot(grid, _kde_1d(s[:, i], grid), color=_MODEL, lw=1.2)
                ax.set_yticks([])
                ax.set_ylim(bottom=0)
            elif i > j:
                ax.scatter(sp[:, j], sp[:, i], s=2, color=_MODEL, alpha=0.3, lw=0, rasterized=True)
                ax.scatter(
                    xp[:, j], xp[:, i], s=size, color=_DATA, alpha=alpha, lw=0, rasterized=True
                )
                ax.set_ylim(lo[i], hi[i])
            else:
                ra, rb = (lo[j], hi[j]), (lo[i], hi[i])
                ga = np.linspace(*ra, _GRID + 1)
                gb = np.linspace(*rb, _GRID + 1)
                ca, cb = (ga[1:] + ga[:-1]) / 2, (gb[1:] + gb[:-1]) / 2
                for v, color in ((x, _DATA), (s, _MODEL)):
                    d = _kde_2d(v[:, j], v[:, i], ra, rb)
                    if d.max() <= 0:
                        continue
                    levels = sorted(set(highest_density_levels(d, _MASSES)))
                    if len(levels) == len(_MASSES) and levels[0] < d.max():
                        ax.contour(ca, cb, d, levels, colors=color, linewidths=(0.8, 1.3))
                ax.set_ylim(lo[i], hi[i])
            ax.tick_params(labelsize=label_size - 1, length=2, pad=1)
            ax.locator_params(nbins=3)
            if i < k - 1:
                ax.set_xticklabels([])
            else:
                ax.set_xlabel(_short(names[j], panel, label_size), fontsize=label_size)
                for t in ax.get_xticklabels():
                    t.set_rotation(45 if k > 4 else 0)
            if j > 0 or i == 0:
                if i != j:
                    ax.set_yticklabels([])
            else:
                ax.set_ylabel(_short(names[i], panel, label_size), fontsize=label_size)


def _curve(ax: Axes, history: FitHistory, first: int) -> None:
    """The training and validation NLL from step ``first`` on.

    From step 0 every value is inside the panel; a zoom (``first > 0``) fits the smoothed
    training curve and the best validation value, and says how far validation leaves it.
    """
    loss = np.asarray(history.train_loss, dtype=float)
    steps = np.arange(1, loss.size + 1)
    keep = steps >= first
    raw = loss[keep]
    ax.plot(steps[keep], raw, color=_DATA, alpha=0.25, lw=0.7, label="train (minibatch)")
    w = max(1, loss.size // 50)
    smooth, at = loss, steps
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        at = steps[w - 1 :]
        ax.plot(
            at[at >= first],
            smooth[at >= first],
            color=_DATA,
            lw=1.3,
            label=f"train ({w}-step mean)",
        )
    val_steps = np.asarray(history.val_steps)
    val = np.asarray(history.val_nll, dtype=float)
    vk = val_steps >= first
    if val.size:
        ax.plot(val_steps[vk], val[vk], "o-", ms=2.5, lw=1.0, color=_MODEL, label="validation")
        if history.best_step is not None and history.best_step >= first:
            ax.axvline(history.best_step, color="0.5", ls=":", lw=1, label="best (kept)")
    if first == 0:
        values = np.concatenate([raw, val])
    else:
        values = np.concatenate([smooth[at >= first], val[val_steps == history.best_step]])
    values = values[np.isfinite(values)]
    if values.size:
        low, high = values.min(), values.max()
        pad = 0.08 * (high - low) if high > low else 0.5
        ax.set_ylim(low - pad, high + pad)
        above = val[vk][val[vk] > high + pad]
        if first > 0 and above.size:
            ax.text(
                0.98,
                0.95,
                f"validation leaves the panel (up to {above.max():.4g})",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
                color=_MODEL,
            )
    ax.set_xlim(first, max(loss.size, first + 1))
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats per row)")
    ax.tick_params(labelsize=8)


def corner_figure(
    x: np.ndarray, s: np.ndarray, names: list[str], history: FitHistory, source: str
) -> Figure:
    """Draws data rows ``x`` against model samples ``s`` and the training ``history``.

    Arguments:
        x: Data rows, shape ``(n, k)``, ``1 <= k <=`` :data:`MAX_COLUMNS`.
        s: Model samples, shape ``(m, k)``.
        names: The ``k`` column names.
        history: The fit's :class:`~pyro_flows.training.FitHistory`.
        source: The data file's name, for the title.

    Example:
        >>> from pyro_flows.training import FitHistory
        >>> rng = np.random.default_rng(0)
        >>> h = FitHistory(train_loss=[3.0, 2.5, 2.2, 2.1], val_steps=[0, 4], val_nll=[3.1, 2.2])
        >>> fig = corner_figure(rng.normal(size=(50, 2)), rng.normal(size=(2000, 2)),
        ...                     ["a", "b"], h, "data.csv")
        >>> len(fig.axes)
        6
    """
    from matplotlib.figure import Figure

    k = x.shape[1]
    if not 1 <= k <= MAX_COLUMNS:
        raise ValueError(f"a corner plot takes 1 to {MAX_COLUMNS} columns, got {k}")
    # A fixed layout in inches (a layout engine takes longer than the drawing on 400 axes).
    panel = {1: 3.2, 2: 2.6}.get(k) or (2.0 if k <= 4 else 1.5 if k <= 8 else max(0.9, 14 / k))
    left, right, top, gap, curves, bottom = 1.0, 0.3, 0.8, 1.2, 2.3, 0.55
    width = max(left + panel * k + right, 8.0)
    height = top + panel * k + gap + curves + bottom
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(
        k,
        k,
        left=left / width,
        right=(left + panel * k) / width,
        top=1 - top / height,
        bottom=(bottom + curves + gap) / height,
        wspace=0.06,
        hspace=0.06,
    )
    _corner(grid, x, s, names, panel)
    size = 9 if k <= 6 else (7 if k <= 12 else 5.5)
    fig.suptitle(
        f"{source}: data (blue, {x.shape[0]} rows) against model samples (orange, "
        f"{s.shape[0]})\n"
        + (
            "the marginal densities"
            if k == 1
            else "diagonal: marginal densities; below: points; above: the contours holding "
            "50% and 90% of each"
        ),
        fontsize=max(size, 8) + 1,
        x=0.1 / width,
        y=1 - 0.1 / height,
        ha="left",
        va="top",
        linespacing=1.4,
    )
    lower = fig.add_gridspec(
        1,
        2,
        left=0.8 / width,
        right=1 - 0.25 / width,
        top=(bottom + curves) / height,
        bottom=bottom / height,
        wspace=0.22,
    )
    whole, zoom = lower.subplots()
    _curve(whole, history, 0)
    whole.set_title("training curve, whole run", fontsize=9)
    whole.legend(fontsize=7, frameon=False)
    n = len(history.train_loss)
    first = max(2, n // 4)
    _curve(zoom, history, first)
    zoom.set_title(f"steps {first} to {n}", fontsize=9)
    return fig
