r"""The oracle closure of :mod:`engine.oracles` for a user's own ``nn.Module``, at inference memory.

:class:`engine.oracles.Oracles` evaluates a loss of *flat* parameter vectors: a perturbed value
:math:`f(\theta + s z)` materialises :math:`\theta + s z`, a full copy of the parameters. MeZO's
point (Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes") is that a
zeroth-order step needs no more memory than inference. :class:`ModuleOracles` keeps that promise
for a real module: :meth:`ModuleOracles.perturbed_value` never writes the parameters and never
copies all of them; the perturbation is applied inside the forward, module by module, with
forward hooks:

* ``nn.Linear`` (its own forward): the output gets the perturbation's effect added chunk by chunk,

  .. math:: y = x (W + sZ)^\top + (b + s z_b) = x W^\top + b + s\,(x Z^\top + z_b),

  with the rows of :math:`Z` regenerated from the seed :data:`engine.oracles.CHUNK` elements at a
  time (:func:`engine.oracles.seeded_normal`) and :math:`x Z^\top` added to the matching output
  columns. Extra memory: one chunk (as drawn) and an ``[N, chunk/in_features]`` product.
* any other module with parameters of its own (LayerNorm, Conv, Embedding, ...): for the duration
  of its forward, its own parameters are swapped for a perturbed copy (the mechanism of
  ``torch.func.functional_call``: ``module._parameters[name] = tensor``), freed when its forward
  returns. Extra memory: one module's parameters.

The direction is the one :class:`engine.oracles.Oracles` draws for the same parameter list:
parameter number ``i`` of ``params`` (the trainable parameters in ``module.parameters()`` order)
uses the stream ``seeded_normal(seed, i, p)``, so a zeroth-order optimizer that regenerates
:math:`z` from ``(seed, i)`` to update ``params`` steps along the direction that was evaluated.

A parameter that a module reads *without calling the owning module's forward* (the output
projection of ``nn.MultiheadAttention``, or a loss that reads ``module.parameters()`` directly)
cannot be perturbed by a hook: :meth:`perturbed_value` raises when a module holding trainable
parameters never ran (``strict=False`` takes such modules as unused instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.func import jvp as forward_jvp

from engine.oracles import OracleBase, Ranker, Tensors, rank_by_value, seeded_normal
from engine.records import OracleCounts

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(module, batch) -> scalar``: how to call the module on a batch and score it."""


class _Call(nn.Module):
    """``loss_fn(module, batch)`` as a module, so ``functional_call`` can swap the parameters of
    the wrapped module for tangents or copies (public API, no private reparametrization)."""

    def __init__(self, module: nn.Module, loss_fn: LossFn, batch: Any) -> None:
        super().__init__()
        self.m = module
        self.loss_fn = loss_fn
        self.batch = batch

    def forward(self) -> torch.Tensor:
        return self.loss_fn(self.m, self.batch)


def _add_rows(out: torch.Tensor, x: torch.Tensor, z: torch.Tensor, start: int, n_in: int, scale: float
              ) -> None:
    r"""``out += scale * x Zᵀ`` for the part of :math:`Z` (``[out, n_in]``, row-major) whose flat
    entries ``start : start + len(z)`` are ``z``: whole rows as one product with a view of ``z``,
    a partial row at either end as one dot product per sample (a row split between two chunks gets
    its two halves added). No copy of the chunk is made."""
    done = 0
    while done < z.numel():
        row, col = divmod(start + done, n_in)
        whole = (z.numel() - done) // n_in if col == 0 else 0
        if whole:
            rows = z[done:done + whole * n_in].view(whole, n_in)
            out[..., row:row + whole].add_(x @ rows.T, alpha=scale)
            done += whole * n_in
        else:
            m = min(n_in - col, z.numel() - done)
            out[..., row].add_(x[..., col:col + m] @ z[done:done + m], alpha=scale)
            done += m


def _uses_linear_forward(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


class ModuleOracles(OracleBase):
    """The closure for ``optimizer.step(closure)`` on a module: :math:`f(\\theta)`,
    :math:`f(\\theta + s z \\odot m)`, :math:`\\nabla f`, :math:`H v` and :math:`\\nabla f^\\top v`
    with :math:`f(\\theta) =` ``loss_fn(module, batch)``; every call counted (``counts``).

    Set ``batch`` between steps to move to the next minibatch.
    """

    def __init__(self, module: nn.Module, loss_fn: LossFn, batch: Any = None, *, strict: bool = True,
                 ranker: Ranker = rank_by_value) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.batch = batch
        self.strict = strict
        self.ranker = ranker
        self.ascent = None
        """No min-max game here: every coordinate descends (the optimizers read it)."""
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(module).__name__} has no trainable parameters")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        """The trainable parameters in ``module.parameters()`` order; number ``i`` is perturbed
        along ``seeded_normal(seed, i, p)``."""
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.counts = OracleCounts()

    # -- zeroth order ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """:math:`f(\\theta)`, forward only."""
        self._count(function_values=1)
        return self.loss_fn(self.module, self.batch)

    @torch.no_grad()
    def perturbed_value(self, seed: int, scale: float,
                        thresholds: Sequence[float | None] | None = None) -> torch.Tensor:
        r""":math:`f(\theta + s\, z(\text{seed}) \odot m)` with :math:`m = 1[|\theta| \le \tau_i]`
        per parameter (``thresholds[i]``; ``None``: no mask). The parameters are not written."""
        fired: set[int] = set()
        handles = []
        try:
            for module in self.module.modules():
                own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) in self._index]
                if not own:
                    continue
                if _uses_linear_forward(module):
                    hook = self._linear_hook(seed, scale, thresholds, fired)
                    handles.append(module.register_forward_hook(hook))
                else:
                    pre, post = self._swap_hooks(own, seed, scale, thresholds, fired)
                    handles.append(module.register_forward_pre_hook(pre))
                    handles.append(module.register_forward_hook(post, always_call=True))
            value = self.loss_fn(self.module, self.batch)
        finally:
            for h in handles:
                h.remove()
        if self.strict:
            idle = [n for n, m in self.module.named_modules()
                    if id(m) not in fired and any(id(p) in self._index for p in m.parameters(recurse=False))]
            if idle:
                raise RuntimeError(
                    f"perturbed_value: the forward of {', '.join(n or '<root>' for n in idle)} never ran, so "
                    f"their parameters could not be perturbed (read without calling the module, e.g. "
                    f"MultiheadAttention.out_proj?). If they are unused, pass strict=False.")
        self._count(function_values=1)
        return value

    def _threshold(self, thresholds: Sequence[float | None] | None, i: int) -> float | None:
        return thresholds[i] if thresholds else None

    def _chunks(self, seed: int, p: torch.Tensor, thresholds: Sequence[float | None] | None):
        """``(slice, z ⊙ m)`` chunks of parameter ``p``'s direction (mask computed per chunk)."""
        i = self._index[id(p)]
        tau = self._threshold(thresholds, i)
        flat = p.detach().reshape(-1)
        for sl, z in seeded_normal(seed, i, p):
            yield sl, (z if tau is None else z * (flat[sl].abs() <= tau).to(z.dtype))

    def _linear_hook(self, seed: int, scale: float, thresholds: Sequence[float | None] | None,
                     fired: set[int]) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Linear, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            fired.add(id(module))
            x = args[0]
            w, b = module.weight, module.bias
            if id(w) in self._index:
                for sl, z in self._chunks(seed, w, thresholds):
                    _add_rows(out, x, z, sl.start, module.in_features, scale)
            if b is not None and id(b) in self._index:
                for sl, z in self._chunks(seed, b, thresholds):
                    out[..., sl].add_(z, alpha=scale)
            return out

        return hook

    def _swap_hooks(self, own: list[tuple[str, torch.Tensor]], seed: int, scale: float,
                    thresholds: Sequence[float | None] | None, fired: set[int]
                    ) -> tuple[Callable[..., None], Callable[..., None]]:
        originals: list[dict[str, Any]] = []  # a stack: a module may run inside its own forward

        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            fired.add(id(module))
            swapped: dict[str, Any] = {}
            copies: dict[int, torch.Tensor] = {}  # one copy per tensor, tied names share it
            for name, p in own:
                if id(p) not in copies:
                    q = p.detach().clone()
                    flat = q.view(-1)
                    for sl, z in self._chunks(seed, p, thresholds):
                        flat[sl] += scale * z
                    copies[id(p)] = q
                swapped[name] = module._parameters[name]
                module._parameters[name] = copies[id(p)]
            originals.append(swapped)

        def post(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            for name, p in originals.pop().items():
                module._parameters[name] = p

        return pre, post

    # -- derivatives (each on a fresh graph) ------------------------------------------------------
    def gradient(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:math:`(f(\\theta), \\nabla f(\\theta))`, the gradient shaped like the parameters."""
        with torch.enable_grad():
            f = self.loss_fn(self.module, self.batch)
            grads = torch.autograd.grad(f, self.params, allow_unused=True, materialize_grads=True)
        self._count(function_values=1, gradients=1)
        return f.detach(), list(grads)

    def hvp(self, vectors: Tensors, *, with_gradient: bool = False
            ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        r""":math:`H v` by double differentiation of a fresh graph; with ``with_gradient`` also
        ``(f, g, Hv)`` from the same graph."""
        with torch.enable_grad():
            f = self.loss_fn(self.module, self.batch)
            g = torch.autograd.grad(f, self.params, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
            hv = torch.autograd.grad(g, self.params, grad_outputs=list(vectors), allow_unused=True,
                                     materialize_grads=True)
        self._count(hvps=1, **({"function_values": 1, "gradients": 1} if with_gradient else {}))
        if with_gradient:
            return f.detach(), [t.detach() for t in g], list(hv)
        return list(hv)

    def jvp(self, vectors: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(f(\theta), \nabla f(\theta)^\top v)` in one forward-mode pass."""
        call = _Call(self.module, self.loss_fn, self.batch)
        names = [f"m.{n}" for n in self.names]

        def f(*ps: torch.Tensor) -> torch.Tensor:
            return functional_call(call, dict(zip(names, ps, strict=True)), ())

        primals = tuple(p.detach() for p in self.params)
        f0, d = forward_jvp(f, primals, tuple(v.to(p.dtype) for v, p in zip(vectors, primals, strict=True)))
        self._count(jvps=1)
        return f0.detach(), d.detach()

    # -- explicit points (each row materialised by the caller: not memory-lean) -------------------
    def _at(self, theta: torch.Tensor) -> torch.Tensor:
        """:math:`f` at one flat parameter vector, through ``functional_call`` (graph kept)."""
        call = _Call(self.module, self.loss_fn, self.batch)
        named = {f"m.{n}": t for n, t in zip(self.names, self.unflat(theta), strict=True)}
        return functional_call(call, named, ())

    @torch.no_grad()
    def values(self, points: torch.Tensor) -> torch.Tensor:
        """:math:`f` at each row of ``points [m, P]`` (m function values)."""
        self._count(function_values=points.shape[0])
        return torch.stack([self._at(row) for row in points])

    def gradient_at(self, points: torch.Tensor) -> torch.Tensor:
        """Gradients ``[m, P]`` at the rows of ``points [m, P]`` (m gradients)."""
        rows = []
        with torch.enable_grad():
            for row in points:
                x = row.detach().clone().requires_grad_(True)
                rows.append(torch.autograd.grad(self._at(x), x)[0])
        self._count(function_values=points.shape[0], gradients=points.shape[0])
        return torch.stack(rows)

    @torch.no_grad()
    def rank(self, candidates: torch.Tensor) -> list[int]:
        """Indices of ``candidates [m, P]`` best first (the values reach only the ranker)."""
        return self._ranked(candidates, torch.stack([self._at(row) for row in candidates]))
