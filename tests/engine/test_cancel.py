"""Cancellation (engine/cancel.py): a cheap checkpoint that long loops call between their pieces.

Each long loop is checked to stop at its next piece -- the Lanczos iteration and SLQ between
Hessian-vector products, Hutchinson inside a block of products, a run between lanes -- by
cancelling the token from inside the work at a known piece and counting the pieces done.
"""

from __future__ import annotations

import threading

import pytest
import torch

from engine.cancel import CancellableThread, Cancelled, CancelToken, cancellable, checkpoint, live_threads
from engine.curvature import HVP, hutchinson_trace, lanczos, spectral_density
from engine.run import LaneConfig, Run, RunConfig
from tests.engine.test_run import Valley

torch.set_num_threads(1)


def test_checkpoint_does_nothing_without_a_token_and_raises_once_cancelled() -> None:
    checkpoint()  # no token bound: ordinary code is unaffected
    token = CancelToken()
    with cancellable(token):
        checkpoint()
        token.cancel()
        with pytest.raises(Cancelled):
            checkpoint()
    checkpoint()  # the binding ended with the block


def test_cancelled_is_not_caught_by_except_exception() -> None:
    token = CancelToken()
    token.cancel()
    with cancellable(token), pytest.raises(Cancelled):
        try:
            checkpoint()
        except Exception:  # what keeps a worker alive after a failed step
            pytest.fail("a failure handler swallowed the cancellation")


def test_tokens_are_per_thread() -> None:
    token = CancelToken()
    token.cancel()
    seen: list[str] = []

    def other() -> None:
        checkpoint()  # this thread has no token bound
        seen.append("ran")

    with cancellable(token):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == ["ran"]


def test_a_cancellable_thread_ends_quietly_at_its_next_checkpoint() -> None:
    started = threading.Event()
    pieces: list[int] = []

    def work() -> None:
        started.set()
        for i in range(10**9):
            checkpoint()
            pieces.append(i)
            threading.Event().wait(0.001)

    t = CancellableThread(work, name="test-work")
    t.start()
    started.wait(5)
    assert t in live_threads()
    t.cancel()
    t.join(5)
    assert not t.is_alive() and t not in live_threads() and t.cancelled
    assert 0 < len(pieces) < 10**9


def _op(dim: int = 30) -> HVP:
    lam = torch.linspace(1.0, 10.0, dim, dtype=torch.float64)
    return HVP(lambda x: 0.5 * (lam * x * x).sum() + 0.1 * (x**4).sum(), torch.ones(dim, dtype=torch.float64))


def _cancel_after(op: HVP, token: CancelToken, products: int) -> list[int]:
    """Cancel ``token`` once ``products`` single products are done; returns the running count."""
    done = [0]
    one = op._one

    def counted(v: torch.Tensor) -> torch.Tensor:
        out = one(v)
        done[0] += 1
        if done[0] == products:
            token.cancel()
        return out

    op._one = counted  # type: ignore[method-assign]
    return done


@pytest.mark.parametrize("estimator", ["lanczos", "slq", "hutchinson"])
def test_curvature_loops_stop_between_products(estimator: str) -> None:
    op, token = _op(), CancelToken()
    done = _cancel_after(op, token, 5)
    g = torch.Generator().manual_seed(0)
    with cancellable(token), pytest.raises(Cancelled):
        if estimator == "lanczos":
            lanczos(op, 3, tol=0.0, generator=g)  # 30 products uncancelled
        elif estimator == "slq":
            spectral_density(op, n_probes=4, m=20, generator=g)  # blocks of 4: stops inside the 2nd
        else:
            hutchinson_trace(op, 100, g, block=32)  # the 6th product of the first block stops it
    assert done[0] == 5  # every product checks first, inside a block too


def test_a_run_stops_between_lanes() -> None:
    lanes = (LaneConfig("sgd", {"lr": 0.01}), LaneConfig("adam", {}))
    run = Run(Valley(), RunConfig(lanes=lanes, device="cpu"))
    token = CancelToken()
    token.cancel()
    with cancellable(token), pytest.raises(Cancelled):
        run.step()
    assert [lane.step for lane in run.lanes.values()] == [0, 0] and run.tick == 0
    assert len(run.step()) == 2  # outside the cancelled context the same run steps on
