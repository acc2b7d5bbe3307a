"""Landscape slices: the slice at the origin is the current loss, a planar trajectory lies in its
PCA plane, projections report what the plane hides, filter normalization matches filter norms, and
the batched grid equals point-by-point evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.run import LaneConfig, Run, RunConfig
from engine.slices import filter_normalized_plane, grid_around, pca_plane, project, slice_grid
from landscapes.networks import get_network


@pytest.fixture(scope="module")
def trained():
    problem = get_network("digits_mlp", width=16)
    run = Run(problem, RunConfig(lanes=(LaneConfig("adam", {"lr": 3e-3}),), device="cpu"))
    run.run(60)
    return problem, run.trajectory(0)[1]


def test_slice_at_the_origin_is_the_current_loss(trained) -> None:
    problem, traj = trained
    plane = pca_plane(traj)
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-2, 2, 5)  # both contain 0 at index 2
    s = slice_grid(problem.loss, plane, alphas, betas)
    assert s.loss.shape == (5, 5) and s.evaluations == 25
    assert s.loss[2, 2] == pytest.approx(float(problem.loss(torch.tensor(traj[-1]))), rel=1e-12)


def test_batched_grid_equals_point_by_point(trained) -> None:
    problem, traj = trained
    plane = pca_plane(traj)
    alphas, betas = np.linspace(-0.5, 0.7, 4), np.linspace(-0.3, 0.2, 3)
    s = slice_grid(problem.loss, plane, alphas, betas, chunk=5)
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            point = torch.tensor(plane.center + a * plane.d1 + b * plane.d2)
            assert s.loss[j, i] == pytest.approx(float(problem.loss(point)), rel=1e-12)


def test_pca_plane_contains_a_planar_trajectory() -> None:
    rng = np.random.default_rng(0)
    P = 500
    center, u, v = rng.normal(size=P), rng.normal(size=P), rng.normal(size=P)
    t = np.linspace(0, 3, 40)
    traj = center + np.outer(np.cos(t) * t, u) + np.outer(np.sin(2 * t), v)  # a curve in span{u, v}
    traj[-1] = center
    plane = pca_plane(traj)
    proj = project(plane, traj)
    assert proj.distance.max() < 1e-10 * np.linalg.norm(traj - center, axis=1).max()
    basis = np.stack([plane.d1, plane.d2], axis=1)
    for w in (u, v):  # the plane is span{u, v}
        assert np.linalg.norm(w - basis @ (basis.T @ w)) < 1e-10 * np.linalg.norm(w)
    assert sum(plane.explained) == pytest.approx(1.0)


def test_projection_reports_what_the_plane_hides() -> None:
    rng = np.random.default_rng(1)
    center, u, v, w = (rng.normal(size=50) for _ in range(4))
    plane = pca_plane(np.stack([center + u, center + v, center]))
    off = center + u + 0.5 * v + 2.0 * w  # w has a component outside the plane
    proj = project(plane, off[None])
    basis = np.stack([plane.d1, plane.d2], axis=1)
    w_out = 2.0 * (w - basis @ (basis.T @ w))
    assert proj.distance[0] == pytest.approx(np.linalg.norm(w_out), rel=1e-10)


def test_filter_normalized_directions_match_filter_norms(trained) -> None:
    problem, traj = trained
    plane = filter_normalized_plane(traj[-1], problem.param_shapes, torch.Generator().manual_seed(0))
    for d in (plane.d1, plane.d2):
        params, dirs = problem.unflatten(torch.tensor(plane.center)), problem.unflatten(torch.tensor(d))
        for name, shape in zip(problem.param_names, problem.param_shapes, strict=True):
            if len(shape) == 1:
                assert torch.count_nonzero(dirs[name]) == 0  # biases stay fixed
            else:
                np.testing.assert_allclose(dirs[name].reshape(shape[0], -1).norm(dim=1),
                                           params[name].reshape(shape[0], -1).norm(dim=1), rtol=1e-9)
    assert not np.allclose(plane.d1, plane.d2)


def test_grid_covers_the_projected_trajectory(trained) -> None:
    _, traj = trained
    proj = project(pca_plane(traj), traj)
    alphas, betas = grid_around(proj, n=11)
    assert alphas.min() < proj.coords[:, 0].min() and alphas.max() > proj.coords[:, 0].max()
    assert betas.min() < proj.coords[:, 1].min() and betas.max() > proj.coords[:, 1].max()
    assert alphas.min() < 0 < alphas.max() and len(alphas) == 11
