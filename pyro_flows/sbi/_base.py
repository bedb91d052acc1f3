"""What NPE and FMPE share: input checks, the embedding network, the support map, files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from .._validation import as_rows, check_hidden_dims, check_positive_int
from ..density import ModelFileError, _atomic_write, _digest

__all__ = ["PosteriorEstimator", "mlp_embedding"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def mlp_embedding(
    input_dim: int, output_dim: int = 32, hidden_dims: Sequence[int] = (64, 64)
) -> nn.Sequential:
    r"""The default embedding network of :math:`x`: an MLP with SiLU activations.

    .. math:: e(x) = W_L\, \mathrm{silu}(\cdots \mathrm{silu}(W_1 x + b_1) \cdots) + b_L

    Arguments:
        input_dim: The size :math:`C` of :math:`x`.
        output_dim: The size of the embedding that conditions the flow.
        hidden_dims: The hidden layer sizes.

    Example:
        >>> mlp_embedding(5, 8)(torch.randn(3, 5)).shape
        torch.Size([3, 8])
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(output_dim, "output_dim")
    sizes = [input_dim, *check_hidden_dims(hidden_dims), output_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _embedding(spec: str | nn.Module | None, x_dim: int, dim: int | None) -> tuple[nn.Module, int]:
    """The embedding module and its output size for ``spec`` (``"mlp"``, None, a module)."""
    if spec is None or spec == "identity":
        return nn.Identity(), x_dim
    if isinstance(spec, str):
        if spec != "mlp":
            raise ValueError(
                f"unknown embedding_net {spec!r}; expected 'mlp', 'identity', None or an nn.Module"
            )
        out = dim if dim is not None else max(32, x_dim)
        return mlp_embedding(x_dim, out), out
    if not isinstance(spec, nn.Module):
        raise TypeError(
            f"embedding_net must be 'mlp', 'identity', None or an nn.Module, got "
            f"{type(spec).__name__}"
        )
    like = next(spec.parameters(), None)
    probe = torch.zeros(2, x_dim, dtype=like.dtype if like is not None else None)
    with torch.no_grad():
        out = spec(probe)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"embedding_net must map x of shape (n, {x_dim}) to (n, E); it gave {shape} for n = 2"
        )
    return spec, out.shape[1]


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class PosteriorEstimator:
    """The parts of :class:`~pyro_flows.sbi.NPE` and :class:`~pyro_flows.sbi.FMPE` in common.

    Subclasses define ``_build(x_dim)``, ``_train(u, x)``, ``_distribution(x)`` (the
    posterior over the unconstrained parameters), ``_config()`` and ``_FORMAT``.
    """

    _FORMAT = ""
    #: The training options every estimator takes (checked by ``_set_training``); a fit may
    #: override them for one call.
    _FIT_SETTINGS: tuple[str, ...] = (
        "num_steps",
        "batch_size",
        "lr",
        "val_fraction",
        "patience",
        "eval_every",
        "clip_grad_norm",
    )

    def __init__(
        self,
        prior: torch.distributions.Distribution,
        embedding_net: str | nn.Module | None,
        embedding_dim: int | None,
        dtype: str,
        seed: int | None,
        progress: bool,
    ) -> None:
        if not isinstance(prior, torch.distributions.Distribution):
            raise TypeError(f"prior must be a torch Distribution, got {type(prior).__name__}")
        if len(prior.event_shape) != 1 or prior.batch_shape != ():
            raise ValueError(
                "prior must have batch shape () and event shape (D,), got batch shape "
                f"{tuple(prior.batch_shape)} and event shape {tuple(prior.event_shape)} "
                "(use .to_event(1) on independent coordinates)"
            )
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        if embedding_dim is not None:
            check_positive_int(embedding_dim, "embedding_dim")
        if not (embedding_net is None or isinstance(embedding_net, str | nn.Module)):
            raise TypeError(
                "embedding_net must be 'mlp', 'identity', None or an nn.Module, got "
                f"{type(embedding_net).__name__}"
            )
        if isinstance(embedding_net, str) and embedding_net not in ("mlp", "identity"):
            raise ValueError(
                f"unknown embedding_net {embedding_net!r}; expected 'mlp', 'identity', None or "
                "an nn.Module"
            )
        self.prior = prior
        self.theta_dim = prior.event_shape[0]
        self.embedding_net = embedding_net
        self.embedding_dim = embedding_dim
        self.dtype = dtype
        self.seed = seed
        self.progress = progress
        #: The map from :math:`\mathbb R^D` onto the prior's support, ``biject_to(support)``.
        self.support_transform: Transform = biject_to(prior.support)
        self.model_: nn.Module | None = None
        self.x_dim_: int | None = None
        self.history_: list[Any] = []
        self.num_simulations_ = 0

    def _set_training(
        self,
        *,
        num_steps: int,
        batch_size: int,
        lr: float,
        val_fraction: float,
        patience: int | None,
        eval_every: int,
        clip_grad_norm: float | None,
    ) -> None:
        """Checks and records the training options of :attr:`_FIT_SETTINGS`."""
        self.num_steps = check_positive_int(num_steps, "num_steps")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.lr = lr
        if not (isinstance(val_fraction, int | float) and 0 < val_fraction < 1):
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.val_fraction = val_fraction
        if patience is not None:
            check_positive_int(patience, "patience")
        self.patience = patience
        self.eval_every = check_positive_int(eval_every, "eval_every")
        self.clip_grad_norm = clip_grad_norm

    def _common_config(self) -> dict[str, Any]:
        """The settings every estimator saves: embedding, training options, seed, dtype."""
        embedding = None if isinstance(self.embedding_net, nn.Module) else self.embedding_net
        return {
            "embedding_net": embedding,  # a module is not saved: load is given it again
            "embedding_dim": self.embedding_dim,
            **{name: getattr(self, name) for name in self._FIT_SETTINGS},
            "seed": self.seed,
            "progress": self.progress,
            "dtype": self.dtype,
        }

    # -- checks ----------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def _check_theta(self, theta: Any, name: str = "theta") -> Tensor:
        if isinstance(theta, Tensor) and theta.dim() == 1 and self.theta_dim == 1:
            theta = theta[:, None]
        t = as_rows(theta, name)
        if t.shape[1] != self.theta_dim:
            raise ValueError(
                f"{name} must have shape (n, {self.theta_dim}) (the prior's event shape), got "
                f"{tuple(t.shape)}"
            )
        inside = self.prior.support.check(t)
        if not bool(inside.all()):
            bad = int((~inside).sum())
            first = int((~inside).nonzero()[0, 0])
            raise ValueError(
                f"{name} has {bad} row(s) outside the prior's support {self.prior.support} (the "
                f"first is row {first}: {t[first].tolist()}); simulate from the prior, or drop them"
            )
        return t

    def _check_x(self, x: Any, name: str = "x", rows: int | None = None) -> Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.dim() != 2:
            raise ValueError(
                f"{name} must be 2-D with shape (num_simulations, C), got shape {tuple(x.shape)}"
            )
        bad = ~torch.isfinite(x).all(-1)
        if bool(bad.any()):
            raise ValueError(
                f"{name} has {int(bad.sum())} row(s) with NaN or infinite values (the first is "
                f"row {int(bad.nonzero()[0, 0])}); drop those simulations (theta and x) first"
            )
        if rows is not None and x.shape[0] != rows:
            raise ValueError(
                f"{name} must have one row per row of theta ({rows}), got {x.shape[0]}"
            )
        if self.x_dim_ is not None and x.shape[1] != self.x_dim_:
            raise ValueError(
                f"{name} must have {self.x_dim_} columns (as at the first fit), got {x.shape[1]}"
            )
        return x.detach()

    def _check_observation(self, x_o: Any) -> Tensor:
        self._check_fitted()
        if isinstance(x_o, np.ndarray):
            x_o = torch.from_numpy(np.ascontiguousarray(x_o))
        if not isinstance(x_o, Tensor):
            raise TypeError(f"x_o must be a torch.Tensor or numpy array, got {type(x_o).__name__}")
        if x_o.dim() == 0 or x_o.shape[-1] != self.x_dim_:
            raise ValueError(
                f"x_o must have shape ({self.x_dim_},) or (batch, {self.x_dim_}), got "
                f"{tuple(x_o.shape)}"
            )
        if not bool(torch.isfinite(x_o).all()):
            raise ValueError("x_o contains NaN or infinite values")
        return x_o.to(self._dtype())

    def _check_fitted(self) -> None:
        if self.model_ is None:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(theta, x)")

    def _unconstrain(self, theta: Tensor) -> Tensor:
        u = self.support_transform.inv(theta.to(self._dtype()))
        bad = ~torch.isfinite(u).all(-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"theta has {int(bad.sum())} row(s) on the boundary of the prior's support (row "
                f"{i}: {theta[i].tolist()}), where the map to unconstrained space is infinite"
            )
        return u

    # -- the public interface ------------------------------------------------------------------
    def fit(self, theta: Any, x: Any, **settings: Any) -> PosteriorEstimator:
        r"""Fits :math:`q(\theta \mid x)` to simulated pairs; a second call trains further.

        Arguments:
            theta: Parameters, shape ``(n, D)``, every row in the prior's support (a row
                outside, or NaN, is a ValueError naming the count).
            x: Their simulations, shape ``(n, C)``, finite.
            settings: Training settings of the constructor to override for this call
                (e.g. ``num_steps``).

        Returns:
            The estimator itself.
        """
        unknown = sorted(set(settings) - set(self._FIT_SETTINGS))
        if unknown:
            raise TypeError(
                f"fit got unknown setting {unknown[0]!r}; expected one of "
                f"{sorted(self._FIT_SETTINGS)}"
            )
        t = self._check_theta(theta)
        xs = self._check_x(x, rows=t.shape[0])
        if t.shape[0] < 10:
            raise ValueError(f"fit needs at least 10 simulations, got {t.shape[0]}")
        u = self._unconstrain(t)
        if self.model_ is None:
            self.x_dim_ = xs.shape[1]
            with torch.random.fork_rng(devices=[], enabled=self.seed is not None):
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                self.model_ = self._build(xs.shape[1]).to(self._dtype())
        self.history_.append(self._train(u, xs.to(self._dtype()), settings))
        self.num_simulations_ += t.shape[0]
        self.model_.eval()
        return self

    def posterior(self, x_o: Any) -> torch.distributions.Distribution:
        r"""The posterior :math:`q(\theta \mid x_o)` as a Pyro distribution over :math:`\theta`.

        :math:`\theta = T(u)`, :math:`T` = ``biject_to(prior.support)``, so every sample lies in
        the prior's support and :math:`\log q(\theta) = \log q(u) - \log|\det J_T(u)|`. An
        ``x_o`` of shape ``(C,)`` gives batch shape ``()``; ``(B, C)`` gives ``(B,)``.
        ``sample``, ``log_prob`` and ``pyro.sample("theta", posterior)`` work as for any
        distribution.
        """
        x_o = self._check_observation(x_o)
        base = self._distribution(x_o)
        return dist.TransformedDistribution(base, [self.support_transform], validate_args=False)

    def sample(self, num_samples: int, x_o: Any) -> Tensor:
        r"""``num_samples`` draws of :math:`\theta \sim q(\theta \mid x_o)`, without gradients."""
        check_positive_int(num_samples, "num_samples")
        with torch.no_grad():
            return self.posterior(x_o).sample((num_samples,))

    def log_prob(self, theta: Any, x: Any) -> Tensor:
        r""":math:`\log q(\theta_i \mid x_i)` for rows ``theta`` ``(n, D)`` and ``x`` ``(n, C)``."""
        self._check_fitted()
        t = self._check_theta(theta)
        xs = self._check_x(x, rows=t.shape[0])
        return self.posterior(xs).log_prob(t.to(self._dtype()))

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Writes the fitted estimator to ``path`` atomically (a ``torch.save`` file).

        The file holds the network's parameters and buffers (the standardisations among them)
        and, as JSON, the settings, the sizes and the prior's description, all covered by a
        SHA-256 checksum. The prior itself is not saved: :meth:`load` takes it again.
        """
        self._check_fitted()
        meta = {
            "config": self._config(),
            "theta_dim": self.theta_dim,
            "x_dim": self.x_dim_,
            "prior": repr(self.prior.support),
            "custom_embedding": isinstance(self.embedding_net, nn.Module),
            "num_simulations": self.num_simulations_,
        }
        state = {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()}
        meta_text = json.dumps(meta)
        payload = {
            "format": self._FORMAT,
            "format_version": 1,
            "meta": meta_text,
            "state_dict": state,
            "sha256": _digest(meta_text, state),
        }
        _atomic_write(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(
        cls,
        path: str | Path,
        prior: torch.distributions.Distribution,
        embedding_net: nn.Module | None = None,
    ) -> PosteriorEstimator:
        """Reads an estimator written by :meth:`save`.

        Arguments:
            path: The file.
            prior: The prior it was fitted with (its support must print the same).
            embedding_net: A custom embedding network of the same architecture, when it was
                fitted with one (its weights are loaded from the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelFileError(f"{path}: not a pyro_flows file ({type(e).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != cls._FORMAT:
            raise ModelFileError(f"{path}: not a file written by {cls.__name__}.save")
        meta_text, state = payload.get("meta"), payload.get("state_dict")
        if (
            not isinstance(meta_text, str)
            or not isinstance(state, dict)
            or payload.get("sha256") != _digest(meta_text, state)
        ):
            raise ModelFileError(f"{path}: corrupt file: its checksum does not match its contents")
        meta = json.loads(meta_text)
        if meta["prior"] != repr(prior.support):
            raise ValueError(
                f"prior has support {prior.support}, but the file was fitted with a prior on "
                f"{meta['prior']}"
            )
        if meta["custom_embedding"] and embedding_net is None:
            raise ValueError(
                "the file was fitted with a custom embedding_net: pass one of the same "
                "architecture (its weights come from the file)"
            )
        config = dict(meta["config"])
        if embedding_net is not None:
            config["embedding_net"] = embedding_net
        est = cls(prior, **config)
        if est.theta_dim != meta["theta_dim"]:
            raise ValueError(f"prior has D = {est.theta_dim}, the file {meta['theta_dim']}")
        est.x_dim_ = meta["x_dim"]
        est.model_ = est._build(meta["x_dim"]).to(est._dtype())
        est.model_.load_state_dict(state)
        est.model_.eval()
        est.num_simulations_ = meta["num_simulations"]
        return est

    # -- for subclasses ---------------------------------------------------------------------------
    def _build(self, x_dim: int) -> nn.Module:
        raise NotImplementedError

    def _train(self, u: Tensor, x: Tensor, settings: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _distribution(self, x_o: Tensor) -> torch.distributions.Distribution:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError
