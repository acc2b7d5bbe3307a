r"""Small real networks as :class:`~engine.problem.Problem`\ s.

A :class:`NetworkProblem` keeps a real ``nn.Module`` (layer-aware optimizers such as AdamP need
its layers: ``param_shapes`` tells the engine how to lay them out) and offers the flat view the
engine races on: ``loss(theta: [B, P]) -> [B]`` evaluates B parameter vectors at once through
``torch.func.functional_call`` under ``torch.func.vmap``. Curvature and zeroth-order code use the
same view (``flat_loss``).

Modes are explicit: ``mode`` ("train" or "eval") is the module mode of every training loss, and
``metrics`` (train/test loss and accuracy on the full sets) always runs in ``metrics_mode``
("eval" by default), so a BatchNorm or Dropout user sees which one each figure used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from landscapes import data as datasets
from landscapes.sizes import check_options

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> scalar
Accuracy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> fraction


def _shape_error(name: str, want: str, outputs: torch.Tensor, targets: torch.Tensor) -> ValueError:
    return ValueError(f"{name}: expected {want}; got outputs of shape {list(outputs.shape)} and targets of "
                      f"shape {list(targets.shape)} (a mismatch would broadcast silently to the wrong loss)")


def _per_class(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    if outputs.dim() != 2 or tuple(targets.shape) != tuple(outputs.shape[:1]):
        raise _shape_error(name, "outputs [n, classes] and class-index targets [n]", outputs, targets)


def _one_logit(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    if outputs.dim() != 2 or outputs.shape[1] != 1 or tuple(targets.shape) != tuple(outputs.shape[:1]):
        raise _shape_error(name, "outputs [n, 1] (one logit) and targets [n]", outputs, targets)


def class_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max output is the target class (one logit: its sign)."""
    if outputs.dim() == 2 and outputs.shape[-1] == 1:
        _one_logit("class_accuracy", outputs, targets)
        return ((outputs[..., 0] > 0).long() == targets.long()).double().mean()
    _per_class("class_accuracy", outputs, targets)
    return (outputs.argmax(dim=-1) == targets).double().mean()


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac1n\sum_i -\log \mathrm{softmax}(f_i)_{y_i}`; outputs ``[n, classes]``, targets
    ``[n]``."""
    _per_class("cross_entropy", outputs, targets)
    return F.cross_entropy(outputs, targets)


def mse_one_hot(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac12 \lVert f(x) - e_y\rVert^2` averaged over samples (MSE to one-hot targets);
    outputs ``[n, classes]``, targets ``[n]``."""
    _per_class("mse_one_hot", outputs, targets)
    # e_y by comparison, not F.one_hot, whose range check reads a value: vmap (per-sample gradients) can't
    one_hot = (targets[..., None] == torch.arange(outputs.shape[-1], device=targets.device)).to(outputs.dtype)
    return 0.5 * ((outputs - one_hot) ** 2).sum(-1).mean()


def binary_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logistic loss of one logit per sample; outputs ``[n, 1]``, targets ``[n]`` in {0, 1}."""
    _one_logit("binary_cross_entropy", outputs, targets)
    return F.binary_cross_entropy_with_logits(outputs[..., 0], targets.to(outputs.dtype))


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac12` the mean of :math:`(f - y)^2` over every entry; outputs and targets must have
    the same shape (``[n]`` or ``[n, k]``): ``[n, 1]`` against ``[n]`` is refused, not broadcast."""
    if outputs.shape != targets.shape:
        raise _shape_error("half_mse", "outputs and targets of the same shape", outputs, targets)
    return 0.5 * ((outputs - targets) ** 2).mean()


class NetworkProblem:
    r"""A module, a loss and data, seen by the engine as a function of one flat parameter vector.

    ``make_module(seed)`` (optional) builds a freshly initialized module, which gives seeded random
    starts; ``extra_metrics`` maps a name to ``f(params_dict) -> scalar`` (e.g. a recovery error).

    ``l2`` :math:`\lambda` adds the penalty :math:`\tfrac\lambda2\lVert\theta\rVert^2` on every
    parameter (weights and biases) to the training loss, its per-sample losses and its minibatch
    losses; ``metrics`` report the data loss without it, so train and test compare.
    """

    bounds = None
    minima = ()

    def __init__(self, *, name: str, module: nn.Module, X_train: torch.Tensor, y_train: torch.Tensor,
                 criterion: Criterion, X_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                 batch_size: int | None = None, accuracy: Accuracy | None = None, mode: str = "train",
                 metrics_mode: str = "eval", title: str = "", description: str = "", latex: str = "",
                 make_module: Callable[[int], nn.Module] | None = None,
                 extra_metrics: Mapping[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] | None = None,
                 l2: float = 0.0) -> None:
        for label, value in (("mode", mode), ("metrics_mode", metrics_mode)):
            if value not in ("train", "eval"):
                raise ValueError(f"{label} must be 'train' or 'eval', got {value!r}")
        if len(X_train) != len(y_train) or len(X_train) == 0:
            raise ValueError(f"{name}: X_train and y_train need the same, non-zero number of rows "
                             f"({len(X_train)} vs {len(y_train)})")
        if (X_test is None) != (y_test is None):
            raise ValueError(f"{name}: give both X_test and y_test, or neither")
        if batch_size is not None and not 1 <= batch_size:
            raise ValueError(f"{name}: batch_size must be >= 1 or None (full batch), got {batch_size}")
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
            raise ValueError(f"{name}: l2 must be a finite number >= 0, got {l2!r}")
        self.l2 = float(l2)
        self.name = name
        self.title = title or name
        self.description = description
        penalty = rf" + \tfrac{{{self.l2:g}}}{{2}}\lVert\theta\rVert^2" if self.l2 and latex else ""
        self.latex = latex + penalty
        self.module = module
        self.criterion = criterion
        self.accuracy = accuracy
        self.mode = mode
        self.metrics_mode = metrics_mode
        self.X_train, self.y_train, self.X_test, self.y_test = X_train, y_train, X_test, y_test
        self.batch_size = None if batch_size is None or batch_size >= len(X_train) else batch_size
        self.make_module = make_module
        self.extra_metrics = dict(extra_metrics or {})
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{name}: the module has no parameters")
        self.param_names = tuple(n for n, _ in named)
        self.param_shapes = tuple(tuple(p.shape) for _, p in named)
        self.dim = sum(p.numel() for _, p in named)
        self.buffers = dict(module.named_buffers())
        self._sizes = [math.prod(s) for s in self.param_shapes]
        self._submodules = list(module.modules())
        self._tied = len(list(module.named_parameters(remove_duplicate=False))) > len(named) or \
            len(list(module.named_buffers(remove_duplicate=False))) > len(self.buffers)
        """Whether the module shares a tensor under two names (then ``functional_call`` must tie
        them, at a cost on every call)."""
        self._x0 = self.flatten({n: p.detach() for n, p in named}).to(torch.float64)
        self._vmap_ok = True
        self._slots = None if self._tied or self.buffers else [
            (module.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in self.param_names]
        """Where each parameter lives (submodule, name), for a module without buffers or shared
        tensors: :meth:`_call` then puts the given tensors in those slots itself, what
        ``functional_call`` does with checks that cost a small network's forward pass again."""

    # -- the flat view -------------------------------------------------------------------------
    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.param_names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(s) for n, t, s in
                zip(self.param_names, theta.split(self._sizes), self.param_shapes, strict=True)}

    def x0(self) -> torch.Tensor:
        """The module's own initial parameters, flattened (float64)."""
        return self._x0.clone()

    def random_starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` fresh initializations ``[n, P]``, seeded from ``generator``."""
        if self.make_module is None:
            raise ValueError(f"{self.name}: random starts need make_module (a seeded initializer)")
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
        return torch.stack([self.flatten(dict(self.make_module(s).named_parameters())).detach().double()
                            for s in seeds])

    def forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return self._call(self.unflatten(theta), X)

    def _call(self, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """The module on ``X`` with ``params`` (name -> tensor) in place of its own."""
        dtype = next(iter(params.values())).dtype
        if self._slots is not None and len(params) == len(self._slots):
            own = [m._parameters[k] for m, k in self._slots]
            try:
                for (m, k), name in zip(self._slots, self.param_names, strict=True):
                    m._parameters[k] = params[name]
                return self.module(X.to(dtype))
            finally:
                for (m, k), p in zip(self._slots, own, strict=True):
                    m._parameters[k] = p
        buffers = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.buffers.items()}
        return functional_call(self.module, (params, buffers), (X.to(dtype),), tie_weights=self._tied)

    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over the rows of ``x``: one vmapped call, or a loop for modules vmap can't take."""
        if x.shape[0] == 1:
            return fn(x.reshape(x.shape[-1]))[None]  # a view: a cheaper backward than x[0]
        if self._vmap_ok:
            try:
                return vmap(fn, randomness="different")(x)
            except (RuntimeError, ValueError, NotImplementedError):
                self._vmap_ok = False  # e.g. in-place buffer updates of BatchNorm in train mode
        return torch.stack([fn(row) for row in x])

    def _with_mode(self, mode: str) -> bool | None:
        """Put the module in ``mode``; returns its mode before (for :meth:`_restore`), or None when
        every submodule was in ``mode`` already (nothing to set, nothing to restore: ``train()``
        walks the whole module, which costs more than a small network's forward pass)."""
        want = mode == "train"
        if all(m.training is want for m in self._submodules):
            return None
        was = self.module.training
        self.module.train(want)
        return was

    def _restore(self, was: bool | None) -> None:
        if was is not None:
            self.module.train(was)

    @property
    def n_train(self) -> int:
        """Training samples (after any ``n_train`` subset): the largest batch."""
        return len(self.X_train)

    def penalty(self, theta: torch.Tensor) -> torch.Tensor:
        r""":math:`\tfrac\lambda2\lVert\theta\rVert^2` at one flat parameter vector (0 without ``l2``)."""
        if not self.l2:
            return theta.new_zeros(())
        return (0.5 * self.l2) * (theta * theta).sum()

    def _data(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.X_train, self.y_train) if batch is None else (self.X_train[batch], self.y_train[batch])

    def loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Training loss of each parameter row of ``x`` ``[B, P]`` (or ``[P]``) on ``batch``
        (indices into the training set; ``None`` is the full set), in ``self.mode``."""
        single = x.dim() == 1
        x = x[None] if single else x
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: expected parameters of size {self.dim}, got {x.shape[-1]}")
        X, y = self._data(batch)
        was = self._with_mode(self.mode)
        try:
            if self.l2:
                out = self._batched(lambda th: self.criterion(self.forward(th, X), y) + self.penalty(th), x)
            else:
                out = self._batched(lambda th: self.criterion(self.forward(th, X), y), x)
        finally:
            self._restore(was)
        return out[0] if single else out

    def loss_parts(self, parts: Sequence[torch.Tensor], batch: Any = None) -> torch.Tensor:
        """:meth:`loss` of B parameter rows given as one tensor per parameter, ``[B, *shape]`` in
        ``param_shapes`` order (how a run keeps them): the same values as ``loss`` of the rows
        flattened, without flattening them into ``[B, P]`` and splitting them again (copies and
        backward steps that cost more than a small network's own forward pass)."""
        X, y = self._data(batch)
        shapes = self.param_shapes

        def one(*ps: torch.Tensor) -> torch.Tensor:
            return self._row_loss(ps, X, y)

        was = self._with_mode(self.mode)
        try:
            if parts[0].shape[0] == 1:  # views, cheaper to differentiate than indexing
                return one(*(p.reshape(s) for p, s in zip(parts, shapes, strict=True))).reshape(1)
            if self._vmap_ok:
                try:
                    return vmap(one, randomness="different")(*parts)
                except (RuntimeError, ValueError, NotImplementedError):
                    self._vmap_ok = False
            return torch.stack([one(*(p[i] for p in parts)) for i in range(parts[0].shape[0])])
        finally:
            self._restore(was)

    def loss_row(self, parts: Sequence[torch.Tensor], batch: Any = None) -> torch.Tensor:
        """:meth:`loss` of one parameter row given as one tensor per parameter in its own shape
        (``param_shapes``), a scalar: what a run with one start differentiates, on leaves of those
        shapes (a leading row dimension adds a view per parameter to the backward pass: ~20% of a
        digits-MLP minibatch gradient; the run against a plain loop in benchmarks/race.py)."""
        X, y = self._data(batch)
        was = self._with_mode(self.mode)
        try:
            return self._row_loss(parts, X, y)
        finally:
            self._restore(was)

    def _row_loss(self, parts: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.criterion(self._call(dict(zip(self.param_names, parts, strict=True)), X), y)
        if self.l2:  # the penalty of the flat vector, summed in the same order as in ``loss``
            out = out + self.penalty(torch.cat([p.reshape(-1) for p in parts]))
        return out

    def _sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One sample's loss (the criterion on a batch of one) plus the penalty."""
        return self.criterion(self.forward(theta, x[None]), y[None]) + self.penalty(theta)

    def per_sample_losses(self, theta: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Loss of each sample of ``batch`` ``[b]`` at one flat parameter vector ``theta [P]`` (each
        with the penalty, so their mean is :meth:`loss`), in ``self.mode``."""
        X, y = self._data(batch)
        was = self._with_mode(self.mode)
        try:
            try:
                return vmap(lambda xi, yi: self._sample_loss(theta, xi, yi), randomness="different")(X, y)
            except (RuntimeError, ValueError, NotImplementedError):  # modules vmap can't take
                return torch.stack([self._sample_loss(theta, xi, yi) for xi, yi in zip(X, y, strict=True)])
        finally:
            self._restore(was)

    def per_sample_grads(self, theta: torch.Tensor, batch: Any = None) -> torch.Tensor:
        r"""Gradients :math:`\nabla_\theta \ell_i` of each sample's loss (:meth:`per_sample_losses`),
        ``[b, P]``, by ``torch.func.vmap(torch.func.grad(...))`` (a loop where vmap can't go); what
        the norm test of :mod:`engine.batching` needs."""
        X, y = self._data(batch)
        theta = theta.detach()
        was = self._with_mode(self.mode)
        per_sample = grad(self._sample_loss)
        try:
            try:
                return vmap(per_sample, in_dims=(None, 0, 0), randomness="different")(theta, X, y)
            except (RuntimeError, ValueError, NotImplementedError):
                return torch.stack([per_sample(theta, xi, yi) for xi, yi in zip(X, y, strict=True)])
        finally:
            self._restore(was)

    def flat_loss(self, theta: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Scalar loss at one flat parameter vector (the view curvature code differentiates)."""
        return self.loss(theta, batch)

    def sample_batch(self, generator: torch.Generator, batch_size: int | None = None) -> torch.Tensor | None:
        """Indices of a minibatch of ``batch_size`` samples (the problem's own size if None) drawn
        without replacement (``None``: the full batch, gradient descent)."""
        size = self.batch_size if batch_size is None else int(batch_size)
        if size is None or size >= len(self.X_train):
            return None
        if size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        return torch.randperm(len(self.X_train), generator=generator)[:size]

    @torch.no_grad()
    def metrics(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-set train/test loss (and accuracy) of each row of ``x`` ``[B, P]``, in
        ``metrics_mode``."""
        was = self._with_mode(self.metrics_mode)
        try:
            out: dict[str, torch.Tensor] = {}
            sets = [("train", self.X_train, self.y_train)]
            if self.X_test is not None:
                sets.append(("test", self.X_test, self.y_test))
            for split, X, y in sets:
                outputs = self._batched(lambda th, X=X: self.forward(th, X), x)
                out[f"{split}_loss"] = torch.stack([self.criterion(o, y) for o in outputs])
                if self.accuracy is not None:
                    out[f"{split}_accuracy"] = torch.stack([self.accuracy(o, y) for o in outputs])
            for name, fn in self.extra_metrics.items():
                out[name] = torch.stack([fn(self.unflatten(row)) for row in x])
            return out
        finally:
            self._restore(was)

    def sampled_losses(self, theta: torch.Tensor, batch: Any, generator: torch.Generator) -> torch.Tensor:
        r"""Per-sample losses ``[B]`` at one flat parameter vector ``theta [P]`` on ``batch``, with the
        targets drawn from the model's own predictive distribution at ``theta`` (no gradient
        through the draw): what Sophia-G's Gauss-Newton-Bartlett estimator differentiates
        (:meth:`engine.oracles.Oracles.gnb_gradient`; :math:`\mathbb{E}[B\,\nabla\hat L\nabla\hat
        L^\top]` is the Gauss-Newton matrix of the criterion's likelihood).

        The criterion names the likelihood; random numbers come from ``generator`` on the CPU, in
        float64, then move to ``theta``'s device:

        * cross-entropy: :math:`\hat y_b \sim \mathrm{softmax}(f_b)` by inverse CDF,
          :math:`\hat y_b = \#\{c : F_{b,c} < u_b\}`, ``u = torch.rand(B)``;
        * binary cross-entropy: :math:`\hat y_b = 1[u_b < \sigma(f_b)]`, ``u = torch.rand(B)``;
        * MSE to one-hot targets (:math:`\tfrac12\lVert f - y\rVert^2`): :math:`\hat y_b = f_b + \xi_b`,
          ``xi = torch.randn(B, K)`` (the likelihood :math:`N(f_b, I)`);
        * half MSE (:math:`\tfrac12` mean over the K outputs of a sample): :math:`\hat y_b = f_b +
          \sqrt K\, \xi_b` (the likelihood :math:`N(f_b, K I)`).

        Any other criterion raises: there is no likelihood to sample from.
        """
        likelihoods = {cross_entropy: "categorical", F.cross_entropy: "categorical",
                       binary_cross_entropy: "bernoulli", mse_one_hot: "gaussian", half_mse: "gaussian_mean"}
        kind = likelihoods.get(self.criterion)
        if kind is None:
            raise ValueError(f"{self.name}: Sophia-G samples labels from the model's likelihood, which is "
                             f"known for cross-entropy, binary cross-entropy and squared-error criteria, "
                             f"not for {getattr(self.criterion, '__name__', self.criterion)!r}")
        X = self.X_train if batch is None else self.X_train[batch]
        was = self._with_mode(self.mode)
        try:
            out = self.forward(theta, X)
        finally:
            self._restore(was)
        n = out.shape[0]
        f = out.detach()
        if kind == "categorical":
            u = torch.rand(n, generator=generator, dtype=torch.float64).to(f.device)
            cdf = torch.softmax(f.to(torch.float64), dim=-1).cumsum(-1)
            y = (cdf < u[:, None]).sum(-1).clamp_(max=f.shape[-1] - 1)
            return F.cross_entropy(out, y, reduction="none")
        if kind == "bernoulli":
            u = torch.rand(n, generator=generator, dtype=torch.float64).to(f.device)
            y = (u < torch.sigmoid(f[..., 0].to(torch.float64))).to(out.dtype)
            return F.binary_cross_entropy_with_logits(out[..., 0], y, reduction="none")
        per_sample = f[0].numel()
        xi = torch.randn(n, per_sample, generator=generator, dtype=torch.float64).to(f.device, f.dtype)
        if kind == "gaussian":
            y = f + xi.reshape(f.shape)
            return 0.5 * ((out - y) ** 2).reshape(n, -1).sum(-1)
        y = f + math.sqrt(per_sample) * xi.reshape(f.shape)
        return 0.5 * ((out - y) ** 2).reshape(n, -1).mean(-1)


# -- a user's own model ------------------------------------------------------------------------

def problem_from_module(module: nn.Module, criterion: Criterion, X: torch.Tensor, y: torch.Tensor, *,
                        X_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                        batch_size: int | None = None, accuracy: Accuracy | None = None,
                        mode: str = "train", name: str | None = None,
                        description: str = "") -> NetworkProblem:
    """Turn any ``nn.Module`` + loss + tensors into a Problem the engine and the app can race on.

    ``criterion(outputs, targets) -> scalar`` is your loss (e.g. ``torch.nn.functional.cross_entropy``);
    ``accuracy(outputs, targets) -> fraction`` is optional (:func:`class_accuracy` for classifiers).
    The module's current parameters are the start point, and the module is used as given: it is
    called through ``torch.func.functional_call``, never trained in place.

    >>> problem = problem_from_module(my_net, F.cross_entropy, X, y, batch_size=32,
    ...                               accuracy=class_accuracy)                       # doctest: +SKIP
    """
    return NetworkProblem(name=name or type(module).__name__, module=module, X_train=X, y_train=y,
                          X_test=X_test, y_test=y_test, criterion=criterion, batch_size=batch_size,
                          accuracy=accuracy, mode=mode, description=description)


# -- the built-in problems ---------------------------------------------------------------------

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU,
                                           "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with torch's default initialization drawn from ``seed``, without touching the
    caller's global random state (``fork_rng`` restores it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double()


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _check_positive(**values: int) -> None:
    for k, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def _subset_note(data: datasets.Dataset, n_train: int | None) -> str:
    return f" Trained on a seeded subset of {data.n_train} samples." if n_train is not None else ""


def logistic_regression(*, seed: int = 0, batch_size: int | None = None, n_train: int | None = None,
                        l2: float = 0.0) -> NetworkProblem:
    data = datasets.breast_cancer(seed=seed).subset(n_train, seed)

    def build(s: int) -> nn.Module:
        return seeded(lambda: nn.Linear(30, 1), s)

    return NetworkProblem(
        name="logistic_regression", title="Logistic regression (breast cancer)", module=build(seed),
        X_train=data.X_train, y_train=data.y_train, X_test=data.X_test, y_test=data.y_test,
        criterion=binary_cross_entropy, accuracy=class_accuracy, batch_size=batch_size, make_module=build,
        l2=l2,
        latex=r"L(w, b) = \tfrac1n \sum_i \log\left(1 + e^{-s_i (w^\top x_i + b)}\right),\ s_i = \pm 1",
        description="Convex: 31 parameters, 30 standardized features of 569 tumours, benign vs malignant."
                    + _subset_note(data, n_train))


def digits_mlp(*, width: int = 64, depth: int = 1, activation: str = "tanh", loss: str = "cross_entropy",
               classes: Sequence[int] | None = None, batch_size: int | None = 64,
               n_train: int | None = None, l2: float = 0.0, seed: int = 0) -> NetworkProblem:
    """An MLP 64 -> width (x depth) -> classes on the 8x8 digits; loss "cross_entropy" or "mse"
    (half squared error to one-hot targets)."""
    _check_positive(width=width, depth=depth)
    criteria = {"cross_entropy": cross_entropy, "mse": mse_one_hot}
    if loss not in criteria:
        raise ValueError(f"loss must be one of {', '.join(criteria)}, got {loss!r}")
    data = datasets.digits(seed=seed, classes=classes).subset(n_train, seed)
    sizes = [64, *([width] * depth), data.n_classes]

    def build(s: int) -> nn.Module:
        return seeded(lambda: mlp(sizes, activation), s)

    arch = "-".join(map(str, sizes))
    return NetworkProblem(
        name="digits_mlp", title=f"MLP {arch} on digits ({activation}, {loss})", module=build(seed),
        X_train=data.X_train, y_train=data.y_train, X_test=data.X_test, y_test=data.y_test,
        criterion=criteria[loss], accuracy=class_accuracy, batch_size=batch_size, make_module=build, l2=l2,
        latex=r"L(\theta) = \tfrac1n \sum_i \ell\big(f_\theta(x_i), y_i\big)",
        description=f"{sum(a * b + b for a, b in itertools.pairwise(sizes)):,} parameters; "
                    f"{data.n_train} training and {len(data.X_test)} test images of 8x8 digits."
                    + _subset_note(data, n_train))


class DigitsCNN(nn.Module):
    """conv(1->8, 3x3) - ReLU - maxpool - conv(8->16, 3x3) - ReLU - maxpool - linear(64->10)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 2 * 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[:-1], 1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(-3))


def digits_cnn(*, batch_size: int | None = 64, n_train: int | None = None, l2: float = 0.0,
               seed: int = 0) -> NetworkProblem:
    data = datasets.digits(seed=seed).subset(n_train, seed)

    def build(s: int) -> nn.Module:
        return seeded(DigitsCNN, s)

    module = build(seed)
    return NetworkProblem(
        name="digits_cnn", title="Small CNN on 8x8 digits", module=module,
        X_train=data.X_train, y_train=data.y_train, X_test=data.X_test, y_test=data.y_test,
        criterion=cross_entropy, accuracy=class_accuracy, batch_size=batch_size, make_module=build, l2=l2,
        latex=r"L(\theta) = \tfrac1n \sum_i \mathrm{CE}\big(\mathrm{CNN}_\theta(x_i), y_i\big)",
        description=f"Two 3x3 conv layers (8 and 16 filters) with max-pooling and a linear head: "
                    f"{sum(p.numel() for p in module.parameters()):,} parameters."
                    + _subset_note(data, n_train))


def moons_mlp(*, width: int = 16, depth: int = 2, activation: str = "tanh", noise: float = 0.2,
              batch_size: int | None = None, n_train: int | None = None, l2: float = 0.0,
              seed: int = 0) -> NetworkProblem:
    _check_positive(width=width, depth=depth)
    data = datasets.moons(noise=noise, seed=seed).subset(n_train, seed)
    sizes = [2, *([width] * depth), 2]

    def build(s: int) -> nn.Module:
        return seeded(lambda: mlp(sizes, activation), s)

    return NetworkProblem(
        name="moons_mlp", title=f"MLP {'-'.join(map(str, sizes))} on two moons", module=build(seed),
        X_train=data.X_train, y_train=data.y_train, X_test=data.X_test, y_test=data.y_test,
        criterion=cross_entropy, accuracy=class_accuracy, batch_size=batch_size, make_module=build, l2=l2,
        latex=r"L(\theta) = \tfrac1n \sum_i \mathrm{CE}\big(f_\theta(x_i), y_i\big)",
        description="Two interleaving half-circles: a small non-linear classification problem."
                    + _subset_note(data, n_train))


class SymmetricFactor(nn.Module):
    r"""The factored model :math:`X = W W^\top`, :math:`W \in \mathbb{R}^{n\times k}`; input
    sensing matrices ``A [b, n, n]``, output :math:`\langle A_i, W W^\top\rangle`."""

    def __init__(self, n: int, k: int, scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(scale * torch.randn(n, k, dtype=torch.float64))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ij,ij->...", A, self.W @ self.W.T)


class AsymmetricFactor(nn.Module):
    r"""The asymmetric factored model :math:`X = F G^\top`, :math:`F, G \in \mathbb{R}^{n\times k}`;
    input sensing matrices ``A [b, n, n]``, output :math:`\langle A_i, F G^\top\rangle`."""

    def __init__(self, n: int, k: int, scale: float) -> None:
        super().__init__()
        self.F = nn.Parameter(scale * torch.randn(n, k, dtype=torch.float64))
        self.G = nn.Parameter(scale * torch.randn(n, k, dtype=torch.float64))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ij,ij->...", A, self.F @ self.G.T)


FACTORIZATIONS = ("symmetric", "asymmetric")


def matrix_sensing(*, n: int = 10, rank: int = 2, factor_rank: int = 5, m: int = 200,
                   init_scale: float = 1e-2, factorization: str = "symmetric", batch_size: int | None = None,
                   n_train: int | None = None, l2: float = 0.0, seed: int = 0) -> NetworkProblem:
    r"""Matrix sensing of a rank-``rank`` PSD matrix :math:`X^\star` from ``m`` Gaussian measurements,
    :math:`\min \tfrac1{2m}\sum_i (\langle A_i, X\rangle - y_i)^2`, with the factored model
    ``factorization``: ``"symmetric"`` :math:`X = WW^\top` (:class:`SymmetricFactor`; symmetric
    :math:`A_i`) or ``"asymmetric"`` :math:`X = FG^\top` (:class:`AsymmetricFactor`; i.i.d. Gaussian
    :math:`A_i`, which see all of :math:`FG^\top`, also its antisymmetric part), factor rank
    ``factor_rank`` (> rank: over-parameterized) and entries :math:`N(0, \alpha^2)` at ``init_scale``
    :math:`\alpha`.

    Xiong, Ding & Du (ICLR 2024), "How Over-Parameterization Slows Down Gradient Descent in Matrix
    Sensing: The Curses of Symmetry and Initialization": over-parameterized, randomly initialized
    gradient descent is sublinear, :math:`\Omega(1/T^2)`, with :math:`WW^\top`, and linear,
    :math:`\exp(-\Omega(\alpha^2 T))`, with :math:`FG^\top` -- applied, as here, to the same PSD
    target. ``recovery_error`` is :math:`\lVert X - X^\star\rVert_F / \lVert X^\star\rVert_F`."""
    _check_positive(n=n, rank=rank, factor_rank=factor_rank, m=m)
    if factorization not in FACTORIZATIONS:
        raise ValueError(f"factorization must be one of {', '.join(FACTORIZATIONS)}, got {factorization!r}")
    asymmetric = factorization == "asymmetric"
    sense = datasets.matrix_sensing(n=n, rank=rank, m=m, seed=seed, symmetric=not asymmetric)
    A_train, y_train = datasets.train_subset("matrix_sensing", sense.A_train, sense.y_train, n_train, seed)
    factor = AsymmetricFactor if asymmetric else SymmetricFactor

    def build(s: int) -> nn.Module:
        return seeded(lambda: factor(n, factor_rank, init_scale), s)

    def recovery_error(params: dict[str, torch.Tensor]) -> torch.Tensor:
        X = params["F"] @ params["G"].T if asymmetric else params["W"] @ params["W"].T
        return torch.linalg.norm(X - sense.X_star) / torch.linalg.norm(sense.X_star)

    over = "over-parameterized" if factor_rank > rank else "exactly parameterized"
    model = r"FG^\top" if asymmetric else r"WW^\top"
    return NetworkProblem(
        name="matrix_sensing", title=f"Matrix sensing (n={n}, rank {rank}, {factorization} factor rank "
                                     f"{factor_rank})",
        module=build(seed), X_train=A_train, y_train=y_train, X_test=sense.A_test,
        y_test=sense.y_test, criterion=half_mse, batch_size=batch_size, make_module=build, l2=l2,
        extra_metrics={"recovery_error": recovery_error},
        latex=rf"L = \tfrac1{{2m}}\sum_i \big(\langle A_i, {model}\rangle - y_i\big)^2",
        description=f"{len(A_train)} Gaussian measurements of a rank-{rank} {n}x{n} matrix; the "
                    f"{factorization} factor has rank {factor_rank} ({over}), initial scale {init_scale:g}. "
                    f"recovery_error = |X - X*|_F / |X*|_F.")


def diabetes_regression(*, depth: int = 0, width: int = 16, activation: str = "tanh",
                        batch_size: int | None = None, n_train: int | None = None, l2: float = 0.0,
                        seed: int = 0) -> NetworkProblem:
    r"""Regression on scikit-learn's diabetes set (10 standardized features, standardized target) with
    half MSE: linear least squares at ``depth`` 0 (a convex quadratic, 11 parameters), else an MLP
    10 -> width (x depth) -> 1. ``test_r2`` is the coefficient of determination on the test part."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    if depth:
        _check_positive(width=width)
    data = datasets.diabetes(seed=seed).subset(n_train, seed)
    sizes = [10, *([width] * depth), 1]

    def build(s: int) -> nn.Module:
        return seeded(lambda: mlp(sizes, activation), s)

    module = build(seed)
    X_test, y_test = data.X_test, data.y_test

    def test_r2(params: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = functional_call(module, params, (X_test.to(params[next(iter(params))].dtype),))
        return 1 - ((pred - y_test) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum()

    kind = "Linear regression" if depth == 0 else f"MLP {'-'.join(map(str, sizes))}"
    return NetworkProblem(
        name="diabetes_regression", title=f"{kind} on diabetes", module=module,
        X_train=data.X_train, y_train=data.y_train, X_test=X_test, y_test=y_test, criterion=half_mse,
        batch_size=batch_size, make_module=build, l2=l2, extra_metrics={"test_r2": test_r2},
        latex=r"L(\theta) = \tfrac1{2n} \sum_i \big(f_\theta(x_i) - y_i\big)^2",
        description=f"Disease progression of {data.n_train} training and {len(X_test)} test patients from 10 "
                    f"standardized features (target standardized too); "
                    f"{sum(a * b + b for a, b in itertools.pairwise(sizes)):,} parameters."
                    + _subset_note(data, n_train))


def digits_mlp_mse(**kwargs: Any) -> NetworkProblem:
    """The digits MLP with MSE to one-hot targets and full-batch gradient descent: the setting in
    which Cohen et al. (2021) saw sharpness rise to 2/eta and hover there (edge of stability)."""
    problem = digits_mlp(**{"loss": "mse", "batch_size": None, **kwargs})
    problem.name = "digits_mlp_mse"
    problem.description += " Full batch, MSE: watch the sharpness climb to 2/eta under gradient descent."
    return problem


NETWORKS: dict[str, Callable[..., NetworkProblem]] = {
    "digits_mlp": digits_mlp,
    "digits_mlp_mse": digits_mlp_mse,
    "logistic_regression": logistic_regression,
    "digits_cnn": digits_cnn,
    "moons_mlp": moons_mlp,
    "matrix_sensing": matrix_sensing,
    "diabetes_regression": diabetes_regression,
}


def available_networks() -> list[str]:
    return list(NETWORKS)


def get_network(name: str, **kwargs: Any) -> NetworkProblem:
    """Build the network problem ``name`` (``get_network("digits_mlp", width=32)``).

    Raises ``ValueError`` for an unknown name or keyword and for a bad value, and
    :class:`engine.limits.LimitError` (a ``ValueError``) for a value above its declared range
    (:data:`landscapes.sizes.OPTIONS`), before anything is built."""
    try:
        factory = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network problem {name!r}; known: {', '.join(NETWORKS)}") from None
    check_options(name, kwargs)
    return factory(**kwargs)
