"""Clipping against hand computation and torch's own global-norm clipping."""

from __future__ import annotations

import pytest
import torch

from engine.clipping import Clip, clip_


def test_norm_clipping_matches_torch_per_row() -> None:
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    h = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = g.clone(), h.clone()
    frac = clip_([a, b], Clip("norm", threshold=2.0), batch_dims=1)
    for row in range(4):
        ref = [g[row].clone().requires_grad_(), h[row].clone().requires_grad_()]
        for t, src in zip(ref, (g[row], h[row]), strict=True):
            t.grad = src.clone()
        total = torch.nn.utils.clip_grad_norm_(ref, 2.0)
        torch.testing.assert_close(a[row], ref[0].grad, rtol=1e-6, atol=0)
        torch.testing.assert_close(b[row], ref[1].grad, rtol=1e-6, atol=0)
        assert frac[row] == float(total > 2.0)


def test_value_clipping_by_hand() -> None:
    g = torch.tensor([0.5, -3.0, 2.0, -0.1], dtype=torch.float64)
    frac = clip_([g], Clip("value", threshold=1.0))
    assert g.tolist() == [0.5, -1.0, 1.0, -0.1]
    assert float(frac) == 0.5


def test_coordinate_clipping_clips_the_largest_fraction_to_the_next_magnitude() -> None:
    g = torch.tensor([[1.0, -8.0, 3.0, 0.5, -4.0, 2.0, 0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    frac = clip_([g], Clip("coordinate", fraction=0.2), batch_dims=1)  # 2 of 10 coordinates
    # |g| sorted: 8, 4, 3, ...: the two largest (8, 4) are clipped to 3, sign kept
    assert g[0].tolist() == [1.0, -3.0, 3.0, 0.5, -3.0, 2.0, 0.1, 0.2, 0.3, 0.4]
    assert frac.tolist() == [0.2]


def test_zero_gradient_is_left_alone() -> None:
    g = torch.zeros(2, 3)
    frac = clip_([g], Clip("norm", threshold=1.0), batch_dims=1)
    assert torch.equal(g, torch.zeros(2, 3)) and frac.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad", [dict(kind="l1"), dict(threshold=0.0), dict(threshold=float("nan")),
                                 dict(kind="coordinate", fraction=1.0), dict(threshold="big")])
def test_bad_clips_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="clip"):
        Clip(**bad)


def test_round_trip() -> None:
    c = Clip("coordinate", fraction=0.05)
    assert Clip.from_dict(c.to_dict()) == c
