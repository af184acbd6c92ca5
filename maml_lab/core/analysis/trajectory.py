"""Parameter paths: bounded recording of theta during training, and their PCA plane (Li et al. 2018).

A recorder keeps at most `capacity` snapshots however long training runs: when full it drops every
other snapshot and doubles its interval, so the kept snapshots stay evenly spread over the whole run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch


def flatten(params) -> np.ndarray:
    """All tensors of a parameter dict as one float64 vector, in key order."""
    return np.concatenate([v.detach().to("cpu", torch.float64).reshape(-1).numpy() for v in params.values()])


def unflatten(vector, like) -> "OrderedDict[str, torch.Tensor]":
    """The inverse of `flatten`, shaped, typed and placed like the tensors of `like`."""
    vector = torch.as_tensor(np.asarray(vector))
    out, start = OrderedDict(), 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[start:start + n].reshape(v.shape).to(device=v.device, dtype=v.dtype)
        start += n
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} values, the parameters {start}")
    return out


class TrajectoryRecorder:
    """Snapshots of theta every `every` iterations, never more than `capacity` of them."""

    def __init__(self, capacity: int = 2000, every: int = 1):
        if capacity < 2 or every < 1:
            raise ValueError(f"need capacity >= 2 and every >= 1, got {capacity}, {every}")
        self.capacity = capacity
        self.every = every
        self.iterations: list[int] = []
        self.snapshots: list[np.ndarray] = []
        self.metrics: list[dict] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def record(self, iteration: int, params, metrics: dict | None = None, force: bool = False) -> bool:
        """Keep this snapshot if it falls on the current interval (or `force`); returns whether it was kept.

        `force` is for the end of a run, so that a path always ends at the final parameters.
        """
        if self.iterations and self.iterations[-1] == iteration:
            return False
        if iteration % self.every and not force:
            return False
        self.iterations.append(int(iteration))
        self.snapshots.append(flatten(params).astype(np.float32))
        self.metrics.append(dict(metrics or {}))
        if len(self.snapshots) >= self.capacity:
            self._thin()
        return True

    def limit_bytes(self, max_bytes: int, min_capacity: int = 64) -> int:
        """Lower the capacity so the snapshots stay within about `max_bytes` (big models: a conv-4 theta is
        ~0.45 MB, so 2,000 snapshots would take 0.9 GB); never below `min_capacity`. Returns the capacity."""
        if self.snapshots:
            per = self.snapshots[0].nbytes
            self.capacity = max(min_capacity, 2, min(self.capacity, int(max_bytes // max(per, 1))))
            while len(self.snapshots) >= self.capacity:
                self._thin()
        return self.capacity

    def _thin(self) -> None:
        """Drop every other snapshot (keeping the newest) and double the interval."""
        keep = list(range(len(self.snapshots) - 1, -1, -2))[::-1]
        self.iterations = [self.iterations[i] for i in keep]
        self.snapshots = [self.snapshots[i] for i in keep]
        self.metrics = [self.metrics[i] for i in keep]
        self.every *= 2

    def array(self) -> np.ndarray:
        return np.stack(self.snapshots) if self.snapshots else np.zeros((0, 0), np.float32)

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.snapshots)


@dataclass
class Plane:
    """A 2D plane in parameter space: origin + a * d1 + b * d2."""

    origin: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    explained: tuple[float, float] | None = None  # PCA: fraction of variance along d1, d2
    kind: str = "pca"
    _pinv: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Coordinates (a, b) of each point [N, P] (least squares, so non-orthogonal directions work).

        The least-squares solution is the basis' pseudo-inverse applied to each point, computed once per
        plane: projecting thousands of snapshots is one [N, P] x [P, 2] product.
        """
        if self._pinv is None:
            basis = np.stack([self.d1, self.d2], axis=1).astype(np.float64)  # [P, 2]
            self._pinv = np.linalg.pinv(basis)  # [2, P]: the minimum-norm least-squares solution, like lstsq
        rel = np.atleast_2d(points).astype(np.float64) - self.origin
        return rel @ self._pinv.T

    def point(self, a: float, b: float) -> np.ndarray:
        return self.origin + a * self.d1 + b * self.d2

    def axis_labels(self) -> tuple[str, str]:
        if self.explained is not None:
            return (f"PC1 ({100 * self.explained[0]:.1f}% of variance)",
                    f"PC2 ({100 * self.explained[1]:.1f}% of variance)")
        return ("direction 1", "direction 2")


EXACT_PCA_LIMIT = 200_000  # snapshots x parameters up to which pca_plane runs a full SVD


def _top_components(rel: np.ndarray, k: int = 2, oversample: int = 8, iterations: int = 6):
    """The top-k singular values and right singular vectors of `rel` [N, P] by randomized subspace iteration
    (Halko et al. 2011), seeded: a few [N, P] x [P, k + oversample] products instead of a full SVD, which on
    a few thousand snapshots of a few thousand parameters takes seconds rather than milliseconds."""
    rng = np.random.default_rng(0)
    width = min(k + oversample, *rel.shape)
    q, _ = np.linalg.qr(rel @ rng.standard_normal((rel.shape[1], width)))
    for _ in range(iterations):
        q, _ = np.linalg.qr(rel.T @ q)
        q, _ = np.linalg.qr(rel @ q)
    _, s, vt = np.linalg.svd(q.T @ rel, full_matrices=False)
    return s[:k], vt[:k]


def pca_plane(trajectories: list[np.ndarray], origin: np.ndarray) -> Plane:
    """PCA of (theta_t - origin) over all snapshots of one or several trajectories (Li et al. 2018).

    Several algorithms share one plane by passing all their trajectories with a common origin. Large
    inputs use randomized subspace iteration for the two components (the explained variance still divides
    by the exact total). Each direction's sign is chosen so that the point farthest along it is positive,
    so a plane recomputed as a path grows does not flip.
    """
    rel = np.concatenate([np.atleast_2d(t).astype(np.float64) for t in trajectories]) - origin
    if rel.shape[0] < 2:
        raise ValueError("a PCA plane needs at least two snapshots")
    total = float(np.einsum("ij,ij->", rel, rel))
    if total == 0.0:
        raise ValueError("the trajectory does not move: no plane to show")
    if rel.size <= EXACT_PCA_LIMIT or min(rel.shape) <= 10:
        _, s, vt = np.linalg.svd(rel, full_matrices=False)
    else:
        s, vt = _top_components(rel)
    vt = vt.copy()
    for i in range(min(2, vt.shape[0])):
        proj = rel @ vt[i]
        if proj[np.argmax(np.abs(proj))] < 0:
            vt[i] = -vt[i]
    d2 = vt[1] if vt.shape[0] > 1 else np.zeros_like(vt[0])
    explained = (float(s[0] ** 2 / total), float(s[1] ** 2 / total) if len(s) > 1 else 0.0)
    return Plane(np.asarray(origin, np.float64), vt[0], d2, explained, "pca")


def filter_normalized_direction(params, generator: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    """A random Gaussian direction with each filter rescaled to the norm of theta's same filter.

    A filter is one output channel of a conv weight or one neuron (row) of a dense weight. Biases and
    batch-norm parameters (tensors of one dimension) get a zero direction, as in Li et al. 2018.
    """
    out = OrderedDict()
    for k, v in params.items():
        v = v.detach()
        if v.dim() <= 1:
            out[k] = torch.zeros_like(v)
            continue
        d = torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
        d_norm = d.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        v_norm = v.reshape(v.shape[0], -1).norm(dim=1)
        out[k] = d * (v_norm / d_norm).reshape(-1, *([1] * (v.dim() - 1)))
    return out


def random_plane(params, seed: int = 0) -> Plane:
    g = torch.Generator().manual_seed(seed)
    d1 = flatten(filter_normalized_direction(params, g))
    d2 = flatten(filter_normalized_direction(params, g))
    return Plane(flatten(params), d1, d2, None, "random")


def task_plane(theta, phi_a, phi_b) -> Plane:
    """The plane through theta and two tasks' adapted parameters (each direction points to one task)."""
    origin = flatten(theta)
    return Plane(origin, flatten(phi_a) - origin, flatten(phi_b) - origin, None, "tasks")
