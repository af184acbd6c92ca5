"""Parameter paths: bounded recording of theta during training, and their PCA plane (Li et al. 2018).

A recorder keeps at most `capacity` snapshots however long training runs: when full it drops every
other snapshot and doubles its interval, so the kept snapshots stay evenly spread over the whole run. Beside each
snapshot it can keep what the algorithm learned besides theta at that iteration (Meta-SGD's `lr.*`, MAML++'s
`lslr.*` and `bn_step.*`, Reptile's carried `inner_adam.*`), flattened the same way, so a view adapting from an
early checkpoint uses the rates of that checkpoint.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class TensorLayout:
    """Names, shapes and dtypes of a dict of tensors: how one flat vector of them (`vector`) reads back (`tensors`).
    What a recorder keeps of the learned tensors beside theta, and what a checkpoint's header says of them."""

    keys: tuple
    shapes: tuple
    dtypes: tuple  # torch dtype names: "float32", "float64"

    @classmethod
    def of(cls, tensors) -> "TensorLayout":
        return cls(tuple(str(k) for k in tensors), tuple(tuple(int(n) for n in v.shape) for v in tensors.values()),
                   tuple(str(v.dtype).removeprefix("torch.") for v in tensors.values()))

    @property
    def size(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    def vector(self, tensors) -> np.ndarray:
        """The tensors as one float32 vector of their own (a copy on the CPU, never a view of a live tensor)."""
        if tuple(tensors) != self.keys:
            raise ValueError(f"tensors {list(tensors)} do not match the layout {list(self.keys)}")
        if not self.keys:
            return np.zeros(0, np.float32)
        return flatten(tensors).astype(np.float32)

    def tensors(self, vector) -> "OrderedDict[str, torch.Tensor]":
        """The inverse of `vector`: fresh CPU tensors of the layout's shapes and dtypes."""
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.size != self.size:
            raise ValueError(f"vector has {vector.size} values, the layout {self.size}")
        out, start = OrderedDict(), 0
        for k, shape, dtype in zip(self.keys, self.shapes, self.dtypes):
            n = math.prod(shape)
            out[k] = torch.from_numpy(np.array(vector[start:start + n])).reshape(shape).to(getattr(torch, dtype))
            start += n
        return out

    def to_dict(self) -> dict:
        return {"keys": list(self.keys), "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, d) -> "TensorLayout":
        """A layout from `to_dict`; ValueError when it is damaged."""
        try:
            keys, shapes, dtypes = list(d["keys"]), list(d["shapes"]), list(d["dtypes"])
            layout = cls(tuple(str(k) for k in keys), tuple(tuple(int(n) for n in s) for s in shapes),
                         tuple(str(t) for t in dtypes))
        except (KeyError, TypeError, ValueError):
            raise ValueError("damaged tensor layout") from None
        if not (len(keys) == len(shapes) == len(dtypes)) or not all(
                isinstance(getattr(torch, t, None), torch.dtype) for t in layout.dtypes):
            raise ValueError("damaged tensor layout")
        return layout


class TrajectoryRecorder:
    """Snapshots of theta every `every` iterations, never more than `capacity` of them.

    With `learned` (a dict of tensors: what the algorithm learned besides theta at that iteration), `record` also
    keeps those as one float32 vector per snapshot (`learned`, aligned with `snapshots`: None where a snapshot was
    recorded without them; `learned_layout` says how a vector reads back). Thinning keeps them aligned, and the byte
    limits count them.
    """

    def __init__(self, capacity: int = 2000, every: int = 1):
        if capacity < 2 or every < 1:
            raise ValueError(f"need capacity >= 2 and every >= 1, got {capacity}, {every}")
        self.capacity = capacity
        self.every = every
        self.iterations: list[int] = []
        self.snapshots: list[np.ndarray] = []
        self.metrics: list[dict] = []
        self.learned: list[np.ndarray | None] = []
        self.learned_layout: TensorLayout | None = None

    def __len__(self) -> int:
        return len(self.snapshots)

    def due(self, iteration: int, force: bool = False) -> bool:
        """Whether `record` would keep a snapshot of this iteration (so callers compute what it needs only then)."""
        if self.iterations and self.iterations[-1] == iteration:
            return False
        return force or not iteration % self.every

    def record(self, iteration: int, params, metrics: dict | None = None, force: bool = False,
               learned=None) -> bool:
        """Keep this snapshot if it falls on the current interval (or `force`); returns whether it was kept.

        `force` is for the end of a run, so that a path always ends at the final parameters. `learned`: the tensors
        the algorithm learned besides theta, copied into a float32 vector (their layout should not change within a
        run; if it does, the vectors of the old layout are dropped).
        """
        if not self.due(iteration, force):
            return False
        self._align()
        vector = None
        if learned:
            layout = TensorLayout.of(learned)
            vector = layout.vector(learned)
            if layout != self.learned_layout:
                if self.learned_layout is not None:
                    self.learned = [None] * len(self.learned)
                self.learned_layout = layout
        self.iterations.append(int(iteration))
        self.snapshots.append(flatten(params).astype(np.float32))
        self.metrics.append(dict(metrics or {}))
        self.learned.append(vector)
        if len(self.snapshots) >= self.capacity:
            self._thin()
        return True

    def learned_at(self, index: int) -> "OrderedDict[str, torch.Tensor] | None":
        """The learned tensors of snapshot `index` (fresh CPU tensors), None when it has none."""
        vector = self.learned[index] if -len(self.learned) <= index < len(self.learned) else None
        return None if vector is None or self.learned_layout is None else self.learned_layout.tensors(vector)

    def learned_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The indices of the snapshots that have learned vectors [M] and those vectors [M, L] (for checkpoints)."""
        self._align()
        rows = [i for i, v in enumerate(self.learned) if v is not None]
        size = self.learned_layout.size if self.learned_layout is not None else 0
        array = np.stack([self.learned[i] for i in rows]) if rows else np.zeros((0, size), np.float32)
        return np.asarray(rows, dtype=np.int64), array

    def _align(self) -> None:
        """One learned entry per snapshot (None for snapshots set from outside without them)."""
        if len(self.learned) != len(self.snapshots):
            self.learned = (self.learned + [None] * len(self.snapshots))[:len(self.snapshots)]

    def _per_snapshot_bytes(self) -> int:
        learned = next((v.nbytes for v in self.learned if v is not None), 0)
        return self.snapshots[0].nbytes + learned

    def limit_bytes(self, max_bytes: int, min_capacity: int = 64) -> int:
        """Lower the capacity so the snapshots (with their learned vectors) stay within about `max_bytes` (big models:
        a conv-4 theta is ~0.45 MB, so 2,000 snapshots would take 0.9 GB); never below `min_capacity`. Returns the
        capacity."""
        if self.snapshots:
            per = self._per_snapshot_bytes()
            self.capacity = max(min_capacity, 2, min(self.capacity, int(max_bytes // max(per, 1))))
            while len(self.snapshots) >= self.capacity:
                self._thin()
        return self.capacity

    def _thin(self) -> None:
        """Drop every other snapshot (keeping the newest) and double the interval."""
        self._align()
        keep = list(range(len(self.snapshots) - 1, -1, -2))[::-1]
        self.iterations = [self.iterations[i] for i in keep]
        self.snapshots = [self.snapshots[i] for i in keep]
        self.metrics = [self.metrics[i] for i in keep]
        self.learned = [self.learned[i] for i in keep]
        self.every *= 2

    def array(self) -> np.ndarray:
        return np.stack(self.snapshots) if self.snapshots else np.zeros((0, 0), np.float32)

    def nbytes(self, learned: bool = True) -> int:
        """Bytes of the snapshots, with their learned vectors unless learned=False."""
        extra = sum(v.nbytes for v in self.learned if v is not None) if learned else 0
        return sum(s.nbytes for s in self.snapshots) + extra


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
