"""Datasets for the network problems: shipped inside scikit-learn or generated, never downloaded.

Every split is seeded and explicit; features are standardized with the *training* part's mean and
standard deviation (the test part never leaks into them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors (features float64, labels int64 or float64 targets)."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int  # 0 for regression targets

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    def subset(self, n_train: int | None, seed: int) -> Dataset:
        """The same set trained on ``n_train`` of its training samples (a seeded choice; the test
        part is unchanged). ``None`` keeps them all."""
        if n_train is None:
            return self
        X, y = train_subset(self.name, self.X_train, self.y_train, n_train, seed)
        return Dataset(self.name, X, y, self.X_test, self.y_test, self.n_classes)


def train_subset(name: str, X: torch.Tensor, y: torch.Tensor, n_train: int | None,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_train`` rows of ``(X, y)`` chosen by a permutation seeded from ``seed`` (its own stream,
    apart from the split's), in their original order; ``None`` keeps every row."""
    if n_train is None:
        return X, y
    n = len(X)
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train <= n:
        raise ValueError(f"n_train must be an integer in 1..{n} (the training samples of {name}), "
                         f"got {n_train!r}")
    keep = np.sort(np.random.default_rng([seed, 1]).permutation(n)[:n_train])
    index = torch.as_tensor(keep)
    return X[index], y[index]


def split_standardize(name: str, X: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float = 0.25,
                      n_classes: int, standardize: bool = True) -> Dataset:
    """Seeded shuffle, split, and per-feature standardization fitted on the training part."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = max(1, round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    X = X.astype(np.float64)
    if standardize:
        mean = X[train].mean(axis=0)
        std = X[train].std(axis=0)
        X = (X - mean) / np.where(std > 0, std, 1.0)  # constant pixels of the digits stay 0
    label = torch.long if n_classes else torch.float64
    return Dataset(name, torch.tensor(X[train]), torch.tensor(y[train], dtype=label),
                   torch.tensor(X[test]), torch.tensor(y[test], dtype=label), n_classes)


def digits(*, seed: int = 0, classes: Sequence[int] | None = None, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 64 features); optionally a subset of
    classes, relabelled 0..k-1 in the order given."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    n_classes = 10
    if classes is not None:
        classes = list(classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
            raise ValueError(f"classes must be >= 2 distinct digits in 0..9, got {classes}")
        keep = np.isin(y, classes)
        relabel = {c: i for i, c in enumerate(classes)}  # in the caller's order
        X, y = X[keep], np.array([relabel[v] for v in y[keep]])
        n_classes = len(classes)
    return split_standardize("digits", X, y, seed=seed, test_fraction=test_fraction, n_classes=n_classes)


def breast_cancer(*, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's Wisconsin breast-cancer set: 569 samples, 30 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return split_standardize("breast_cancer", X, y, seed=seed, test_fraction=test_fraction, n_classes=2)


def moons(*, n: int = 400, noise: float = 0.2, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Two interleaving half-circles (``sklearn.datasets.make_moons``), generated from ``seed``."""
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return split_standardize("moons", X, y, seed=seed, test_fraction=test_fraction, n_classes=2)


def diabetes(*, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's diabetes regression set (442 patients, 10 features, a disease-progression
    score a year later). Features and target are standardized with the training part's mean and
    standard deviation; targets have shape ``[n, 1]`` (one output per sample)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    data = split_standardize("diabetes", X, y, seed=seed, test_fraction=test_fraction, n_classes=0)
    mean, std = data.y_train.mean(), data.y_train.std(unbiased=False)
    return Dataset("diabetes", data.X_train, ((data.y_train - mean) / std)[:, None], data.X_test,
                   ((data.y_test - mean) / std)[:, None], 0)


@dataclass(frozen=True)
class SensingData:
    r"""Matrix sensing: :math:`y_i = \langle A_i, X^\star\rangle`, :math:`X^\star = U U^\top`,
    :math:`U \in \mathbb{R}^{n\times r}`, :math:`A_i = (G_i + G_i^\top)/2` with Gaussian :math:`G_i`
    (``symmetric``), or :math:`A_i = G_i` (the asymmetric setting's i.i.d. Gaussian measurements)."""

    A_train: torch.Tensor  # [m, n, n]
    y_train: torch.Tensor  # [m]
    A_test: torch.Tensor
    y_test: torch.Tensor
    X_star: torch.Tensor  # [n, n]


def matrix_sensing(*, n: int = 10, rank: int = 2, m: int = 200, m_test: int = 100,
                   seed: int = 0, symmetric: bool = True) -> SensingData:
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be in 1..n={n}, got {rank}")
    if m < 1 or m_test < 1:
        raise ValueError("m and m_test must be positive")
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, rank, generator=g, dtype=torch.float64) / n**0.5
    X_star = U @ U.T

    def measure(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        G = torch.randn(count, n, n, generator=g, dtype=torch.float64)
        A = (G + G.transpose(1, 2)) / 2 if symmetric else G  # the same draws either way
        return A, torch.einsum("kij,ij->k", A, X_star)

    A_train, y_train = measure(m)
    A_test, y_test = measure(m_test)
    return SensingData(A_train, y_train, A_test, y_test, X_star)
