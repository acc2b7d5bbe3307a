r"""Memory of one optimizer step: what it holds, counted exactly, and what the allocator saw.

Per trajectory, one step of an optimizer holds

.. math:: M = \underbrace{P b}_{\text{parameters}} + \underbrace{G}_{\text{gradients}}
          + \underbrace{S}_{\text{optimizer state}} + \underbrace{A}_{\text{saved activations}}
          + \text{transients}

(:math:`P` parameters of :math:`b` bytes). The first four are **accounted**: counted exactly from
the tensors themselves, each storage once --

* :math:`S` (:func:`state_bytes`): the tensors in ``optimizer.state`` and those the optimizer keeps
  as attributes (Adam: :math:`2Pb` plus one ``step`` scalar per parameter tensor; SGD: 0; MeZO: 0;
  M-FAC: its window of past gradients);
* :math:`A` (:class:`SavedActivations`): the tensors autograd saves for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks`` (parameters, and views of them, are not
  activations); largest over the step's derivative calls, since their graphs never coexist;
* :math:`G`: the ``.grad`` the step holds (first order, and the gradient a second-order step reads),
  or the gradients / tangents the optimizer took from the oracle (forward mode: the tangent
  :math:`v`).

By oracle: function values (zeroth order: MeZO) run forward under ``no_grad`` and hold
:math:`G = A = 0`; JVPs hold a tangent and nothing saved; gradients hold :math:`G = Pb` and the
forward's saved activations; HVPs also hold the double-backward graph.

The **peak** is measured, never inferred: ``torch.cuda.max_memory_allocated`` with a reset around
the step (:func:`measure_peak_cuda`) or, on CPU, the peak RSS of an isolated subprocess
(:func:`measure_peak_subprocess`: ``VmHWM`` of a fresh interpreter with
``MALLOC_MMAP_THRESHOLD_=65536`` and ``MKL_DISABLE_FAST_MM=1`` so freed tensors and GEMM buffers go
back to the OS, reset after the setup). Both are reported as the increase over the memory in use
before the step. ``tracemalloc`` sees none of torch's allocations, and plain RSS keeps what glibc
has not returned: neither is used. A transient (Adam's :math:`\sqrt{\hat v}` temporaries, Newton's
dense Hessian) is in the measured peak only.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.module_oracles import ModuleOracles
from engine.oracles import Oracles, model_view
from engine.registry import OptimizerSpec, Oracle, get_spec

ACCOUNTED = "accounted"
MEASURED_CUDA = "measured (CUDA max_memory_allocated)"
MEASURED_RSS = "measured (peak RSS of an isolated subprocess)"

ROOT = Path(__file__).resolve().parents[1]


# -- counting tensors ----------------------------------------------------------------------------

def _storage(t: torch.Tensor) -> tuple[Any, int]:
    """``(key, bytes)`` of the storage behind ``t`` (a view keeps its whole storage alive)."""
    try:
        s = t.untyped_storage()
        return (t.device, s.data_ptr(), s.nbytes()), s.nbytes()
    except (RuntimeError, NotImplementedError):  # a wrapper without storage (functorch, sparse)
        return ("id", id(t)), t.numel() * t.element_size()


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def tensor_bytes(obj: Any, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages of the tensors in ``obj`` (nested containers), leaving out
    storages shared with ``exclude``."""
    skip = {_storage(t)[0] for t in exclude}
    seen: dict[Any, int] = {}
    for t in _tensors(obj):
        key, n = _storage(t)
        if key not in skip:
            seen[key] = n
    return sum(seen.values())


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    r"""Bytes of the optimizer's state tensors, each storage once, parameters left out: everything in
    ``optimizer.state``, and tensors it keeps as attributes of its own (M-FAC's window of past
    gradients, a population's particles: state too, even if not in ``state``).

    ``torch.optim`` keeps a ``step`` counter per parameter tensor as a 0-d tensor of the default
    float dtype (4 bytes); others keep a Python int, which is not tensor memory and not counted."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    own = {k: v for k, v in vars(optimizer).items() if k not in ("state", "param_groups", "defaults")}
    return tensor_bytes([list(optimizer.state.values()), own], exclude=params)


def _is_parameter(t: torch.Tensor) -> bool:
    """A leaf that requires grad, or a view of one: the parameters however an oracle laid them out
    (``Oracles`` differentiates a flat leaf and views it per layer)."""
    if t.is_leaf and t.requires_grad:
        return True
    base = getattr(t, "_base", None)
    return base is not None and base.is_leaf and base.requires_grad


class SavedActivations:
    """Context manager counting the bytes autograd saves for backward inside it, each storage once.

    Parameters are not activations: storages shared with ``exclude`` or with any saved leaf that
    requires grad (or a view of one) are left out, wherever in the graph they turn up (a double
    backward saves transposes of the weights, re-viewed from the saved variables)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._parameters = {_storage(t)[0] for t in exclude}
        self._seen: dict[Any, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key, n = _storage(t)
        if _is_parameter(t):
            self._parameters.add(key)
        else:
            self._seen[key] = n
        return t  # the tensor itself: counting adds no memory

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(n for key, n in self._seen.items() if key not in self._parameters)

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """``(fn(), bytes saved for backward while it ran)`` (see :class:`SavedActivations`)."""
    with SavedActivations(exclude) as saved:
        out = fn()
    return out, saved.bytes


# -- the report ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One bar: a name, bytes, and how it was obtained (:data:`ACCOUNTED` or a measured kind)."""

    name: str
    bytes: int
    kind: str


@dataclass(frozen=True)
class MemoryReport:
    """Memory of one step of one trajectory. The four parts are accounted (exact, from the
    tensors); ``peak_bytes`` is measured (``peak_kind`` says how), or None when not measured."""

    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    peak_bytes: int | None = None
    peak_kind: str | None = None
    optimizer: str = ""
    oracle: str = ""

    @property
    def accounted_bytes(self) -> int:
        """Parameters + gradients + state + saved activations (transients not included)."""
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes + self.activation_bytes

    @property
    def training_bytes(self) -> int:
        """What the step holds beyond the parameters (gradients + state + saved activations)."""
        return self.accounted_bytes - self.parameter_bytes

    def figures(self) -> list[Figure]:
        """The bars, each labelled accounted or measured."""
        out = [Figure("parameters", self.parameter_bytes, ACCOUNTED),
               Figure("gradients", self.gradient_bytes, ACCOUNTED),
               Figure("optimizer state", self.optimizer_state_bytes, ACCOUNTED),
               Figure("saved activations", self.activation_bytes, ACCOUNTED)]
        if self.peak_bytes is not None:
            out.append(Figure("peak above baseline", self.peak_bytes, self.peak_kind or "measured"))
        return out

    def with_peak(self, peak: PeakMeasurement) -> MemoryReport:
        return replace(self, peak_bytes=peak.increase, peak_kind=peak.kind)


# -- accounting one step -------------------------------------------------------------------------

class _Probe:
    """Stands in for an oracle object: counts the saved activations of each derivative call and
    the gradient / tangent bytes handed over; everything else is the wrapped object's."""

    def __init__(self, oracles: Any) -> None:
        self._oracles = oracles
        self.activation_bytes = 0
        self.gradient_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._oracles, name)

    def _derivative(self, fn: Callable[[], Any]) -> Any:
        out, saved = saved_activation_bytes(fn, exclude=self._oracles.params)
        self.activation_bytes = max(self.activation_bytes, saved)
        return out

    def _held(self, tensors: Any) -> None:
        self.gradient_bytes = max(self.gradient_bytes, tensor_bytes(tensors, exclude=self._oracles.params))

    def __call__(self) -> torch.Tensor:
        return self._oracles()

    def gradient(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f, g = self._derivative(self._oracles.gradient)
        self._held(g)
        return f, g

    def gradient_at(self, points: torch.Tensor) -> torch.Tensor:
        g = self._derivative(lambda: self._oracles.gradient_at(points))
        self._held(g)
        return g

    def hvp(self, vectors: Sequence[torch.Tensor], *, with_gradient: bool = False) -> Any:
        out = self._derivative(lambda: self._oracles.hvp(vectors, with_gradient=with_gradient))
        if with_gradient:
            self._held(out[1])
        return out

    def gnb_gradient(self, generator: torch.Generator) -> tuple[int, list[torch.Tensor]]:
        out = self._derivative(lambda: self._oracles.gnb_gradient(generator))
        self._held(out[1])
        return out

    def jvp(self, vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._derivative(lambda: self._oracles.jvp(vectors))
        self._held(list(vectors))  # forward mode holds the tangent v
        return out


def _problem_oracles(problem: Any, dtype: torch.dtype, seed: int) -> Oracles:
    """Fresh leaves at the problem's start, laid out like a run lays them out for one trajectory
    (one tensor per layer for a network, one ``[d]`` tensor otherwise)."""
    x0 = problem.x0().to(dtype)
    shapes = getattr(problem, "param_shapes", None)
    if shapes is None:
        params = [x0.clone().requires_grad_(True)]
    else:
        sizes = [int(torch.Size(s).numel()) for s in shapes]
        params = [c.reshape(s).clone().requires_grad_(True)
                  for c, s in zip(x0.split(sizes), shapes, strict=True)]
    batch = problem.sample_batch(torch.Generator().manual_seed(seed))
    ascent = getattr(problem, "ascent", None)
    ascent = None if ascent is None else torch.as_tensor(ascent, dtype=torch.bool)
    sampled = getattr(problem, "sampled_losses", None)  # Sophia-G's labels drawn from the model
    hook = None if sampled is None else (lambda theta, gen: sampled(theta, batch, gen))
    return Oracles(lambda x: problem.loss(x, batch), params, ascent=ascent, sampled_losses=hook,
                   bounds=getattr(problem, "bounds", None), model=model_view(problem, batch))


def account(spec: OptimizerSpec | str, target: Any, *, hyperparameters: Mapping[str, Any] | None = None,
            steps: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64) -> MemoryReport:
    r"""Accounted memory of ``steps`` steps of one trajectory (cheap: no measurement).

    ``target`` is an engine problem (fresh parameters at its start, in ``dtype``, as a run lays them
    out: what the app calls per lane) or an oracle object whose ``params`` are stepped in place
    (:class:`engine.oracles.Oracles`, :class:`engine.module_oracles.ModuleOracles`: pass one over a
    copy of a model you want to keep). The step is the run's: a first-order optimizer gets
    :math:`\nabla f` in ``.grad``; a closure-driven one is stepped with the oracles (an HVP one also
    gets ``.grad``). Gradients and state are read after the last step; saved activations are the
    largest over every derivative call.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    oracles = target if hasattr(target, "perturbed_value") else _problem_oracles(target, dtype, seed)
    params = oracles.params
    probe = _Probe(oracles)
    optimizer = spec.build(params, hyperparameters, seed=seed)
    for _ in range(steps):
        for p in params:
            p.grad = None
        if spec.oracle in (Oracle.GRADIENTS, Oracle.HVPS):
            _, grads = probe.gradient()
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        if spec.closure_driven:
            optimizer.step(probe)
        else:
            optimizer.step()
    grads = tensor_bytes([p.grad for p in params if p.grad is not None])
    report = MemoryReport(
        parameter_bytes=tensor_bytes(params),
        gradient_bytes=max(grads, probe.gradient_bytes),
        optimizer_state_bytes=state_bytes(optimizer),
        activation_bytes=probe.activation_bytes,
        optimizer=spec.name, oracle=str(spec.oracle))
    for p in params:
        p.grad = None
    return report


# -- measuring the peak --------------------------------------------------------------------------

@dataclass(frozen=True)
class PeakMeasurement:
    """A measured peak: ``increase = peak - baseline`` bytes (what the step added at its worst)."""

    increase: int
    baseline: int
    peak: int
    kind: str
    hwm_reset: bool = True
    """RSS only: the high-water mark was reset after the setup (else the baseline is the setup's
    own high-water mark, and the increase can only be underestimated)."""


def measure_peak_cuda(step: Callable[[], Any], device: torch.device | str | None = None) -> PeakMeasurement:
    """Peak CUDA memory of ``step()`` above what was allocated before it
    (``reset_peak_memory_stats`` then ``max_memory_allocated``, synchronized on both sides)."""
    device = torch.device("cuda") if device is None else torch.device(device)
    gc.collect()
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return PeakMeasurement(increase=peak - baseline, baseline=baseline, peak=peak, kind=MEASURED_CUDA)


_CHILD = r"""
import gc, importlib, json, sys

def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key + " is not in /proc/self/status")

_module, _name = sys.argv[1].split(":")
_step = getattr(importlib.import_module(_module), _name)(**json.loads(sys.argv[3]))
gc.collect()
if sys.argv[2] == "cuda":
    from engine.memory import measure_peak_cuda
    _m = measure_peak_cuda(_step)
    _out = {"baseline": _m.baseline, "peak": _m.peak, "reset": True}
else:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _reset = True
    except OSError:
        _reset = False
    _baseline = _status("VmHWM")
    _step()
    _out = {"baseline": _baseline, "peak": _status("VmHWM"), "reset": _reset}
print("OPTISCOPE_PEAK " + json.dumps(_out), flush=True)
"""


def measure_peak_subprocess(target: str, *, params: Mapping[str, Any] | None = None,
                            cuda: bool = False, timeout: float = 600.0,
                            env: Mapping[str, str] | None = None) -> PeakMeasurement:
    """Peak memory of one step in a fresh interpreter, above the baseline after its setup.

    ``target`` names an importable function, ``"package.module:function"``; the child calls it
    with ``params`` (JSON: problem names, sizes, hyperparameters travel as data, no source code
    is ever executed) and it returns the step, a callable of no arguments. Everything the function
    does before returning (imports, model, data, warm-up) is the baseline.

    CPU: ``VmHWM`` from ``/proc/self/status``, reset to the current RSS after the setup (write "5"
    to ``/proc/self/clear_refs``), with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed
    tensors to the OS and ``MKL_DISABLE_FAST_MM=1`` so MKL does not keep its GEMM buffers (about
    1 MB per new shape otherwise): RSS then follows live memory. One thread (``OMP_NUM_THREADS=1``)
    unless ``env`` says otherwise. ``cuda=True``: :func:`measure_peak_cuda` in the child instead.

    Warm up in the setup: run the step once on something tiny. The first optimizer a process
    builds imports ~800 modules (~70 MB of RSS: ``torch.optim`` pulls in ``torch._dynamo``) and
    first calls page in kernels; without a warm-up the "peak" of a cold step is mostly that
    (:func:`mlp_step` does it).
    """
    child_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MKL_DISABLE_FAST_MM": "1",
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child_env.update(env or {})
    if target.count(":") != 1:
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    proc = subprocess.run([sys.executable, "-c", _CHILD, target, "cuda" if cuda else "cpu",
                           json.dumps(dict(params or {}))],
                          capture_output=True, text=True, env=child_env, cwd=ROOT, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OPTISCOPE_PEAK ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1].split(" ", 1)[1])
    return PeakMeasurement(increase=out["peak"] - out["baseline"], baseline=out["baseline"], peak=out["peak"],
                           kind=MEASURED_CUDA if cuda else MEASURED_RSS, hwm_reset=out["reset"])


def mlp(sizes: Sequence[int], batch: int, device: str = "cpu") -> tuple[
        torch.nn.Module, tuple[torch.Tensor, torch.Tensor], Callable[..., torch.Tensor]]:
    """A seeded ReLU MLP of widths ``sizes`` (input first), a random classification batch and its
    cross-entropy ``loss(module, batch)``: the model the memory measurements step."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    data = (torch.randn(batch, sizes[0], device=device), torch.randint(0, sizes[-1], (batch,), device=device))
    return model, data, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])


def mlp_step(mode: str, sizes: Sequence[int], batch: int, device: str = "cpu",
             steps: int = 2) -> Callable[[], None]:
    """``steps`` steps of ``mode`` on :func:`mlp` (a :func:`measure_peak_subprocess` target):
    ``"inference"`` (forwards under ``no_grad``), a closure-driven optimizer of the registry
    (zeroth order through :class:`engine.module_oracles.ModuleOracles`: perturbed forwards, never
    a copy of the parameters), or a first-order one (forward, backward, step). The same step runs
    once on a tiny MLP first: the warm-up (imports, kernels) belongs to the baseline."""
    def build(widths: Sequence[int], n: int) -> Callable[[], None]:
        model, data, loss = mlp(widths, n, device)
        if mode == "inference":
            def step() -> None:
                with torch.no_grad():
                    for _ in range(steps):
                        loss(model, data)
            return step
        spec = get_spec(mode)
        if spec.closure_driven:
            oracles = ModuleOracles(model, loss, data)

            def step() -> None:
                opt = spec.build(oracles.params, seed=0)
                for _ in range(steps):
                    opt.step(oracles)
            return step

        def step() -> None:
            opt = spec.build(model.parameters())
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss(model, data).backward()
                opt.step()
        return step

    build((8, 4, 2), 4)()
    return build(tuple(sizes), batch)
