"""A built-in handwriting-like image set, generated from a seed (no download): "glyphs".

Alphabets of pen-stroke characters, built like real scripts. Each alphabet has a style: a grid of anchor
points its strokes run between, which moves it allows (straight, diagonal, long), how often a leg bows into
a curve, how often a joint is a sharp corner, loops, hooks and dots, pen width, aspect, and a few "radical"
strokes its characters share. A character is a prototype of 1-4 strokes, each a Hermite (Catmull-Rom)
spline through a few control points where each control point is smooth or a corner. Each sample is one
"drawer's" rendering: control points jittered, strokes shifted and scaled a little, corners more or less
rounded, a small random affine map (rotation, scale, shear, translation) and pen width, rendered
anti-aliased at 28x28 with strokes 1.0 on 0.0, like Omniglot in the MAML paper.

Rendering is vectorized: a stroke is the line integral of a Gaussian pen, approximated by points spaced
uniformly along the ink; a 2-D isotropic Gaussian is separable, so an image is one small matrix product
(Gy^T diag(w) Gx) and a batch of images one batched matmul. 1,200 characters x 20 samples take about a second.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .imagesets import (
    ImageSet,
    LoadCancelled,
    LoadReport,
    Preprocessing,
    _cancel_requested,
    cache_key,
    default_cache_dir,
    load_cache,
    save_cache,
)

GLYPH_VERSION = 1
MAX_STROKES = 4
MAX_POINTS = 9  # control points per stroke
SEG_SAMPLES = 10  # curve samples per spline segment before resampling by arc length
INK_POINTS = 160  # points per image, spread uniformly along all its strokes
BOX = 0.85  # characters fit [-BOX, BOX]^2 (box units; the box [-1, 1] spans 84% of the image)

_SYLLABLES = ("ka", "ve", "ru", "mi", "to", "sa", "ne", "lo", "pi", "da", "qu", "zo", "ri", "fe", "mu", "ta", "ko",
              "shi", "ya", "ge", "bo", "ni", "wa", "xe", "lu", "ha", "ji", "po", "ze", "ma")


@dataclass(frozen=True)
class GlyphConfig:
    """What the set depends on; together with GLYPH_VERSION it is the cache key."""

    seed: int = 0
    num_alphabets: int = 40
    characters_per_alphabet: int = 30
    samples: int = 20
    size: int = 28

    def __post_init__(self) -> None:
        if self.num_alphabets < 1 or self.characters_per_alphabet < 1 or self.samples < 1:
            raise ValueError("glyphs need at least one alphabet, one character and one sample")
        if not 8 <= self.size <= 256:
            raise ValueError(f"glyph size must be between 8 and 256 pixels, got {self.size}")

    @property
    def num_characters(self) -> int:
        return self.num_alphabets * self.characters_per_alphabet


# --------------------------------------------------------------------------------------------------------------
# Prototypes (numpy; one Python loop over characters, cheap)

_ORTHO = [(1, 0), (-1, 0), (0, 1), (0, -1)]
_DIAG = [(1, 1), (-1, -1), (1, -1), (-1, 1)]
_LONG = [(2, 0), (-2, 0), (0, 2), (0, -2)]
_KNIGHT = [(2, 1), (-2, -1), (1, 2), (-1, -2), (2, -1), (-2, 1), (1, -2), (-1, 2)]


@dataclass
class _Style:
    grid: tuple[int, int]  # anchor points across, down
    move_weights: np.ndarray  # ortho, diagonal, long, knight
    curve: float  # probability a leg bows
    bulge: float  # typical bow, as a fraction of the leg length
    corner: float  # probability an inner joint is a sharp corner
    legs: np.ndarray  # probabilities of 1..3 legs per stroke
    strokes: np.ndarray  # probabilities of 1..4 strokes per character
    loop: float  # probability a stroke is a loop (circle/ellipse)
    hook: float  # probability a stroke ends in a small curl
    dot: float  # probability a character gets a dot
    connect: float  # probability a stroke starts where the character already has ink
    width: float  # pen width factor
    aspect: float  # width / height of the anchor grid
    reuse: float  # probability a stroke is one of the radicals
    radicals: list = field(default_factory=list)  # node paths shared by the alphabet's characters


def _make_style(rng: np.random.Generator) -> _Style:
    g = int(rng.choice([3, 3, 4]))
    style = _Style(
        grid=(g, int(rng.choice([g, g, 3, 4]))),
        move_weights=rng.dirichlet([4.0, 1.5, 1.5, 0.3]),
        curve=float(rng.beta(1.2, 1.8)),
        bulge=float(rng.uniform(0.2, 0.45)),
        corner=float(rng.beta(2.0, 1.2)),
        legs=rng.dirichlet([2.5, 2.0, 0.8]),
        strokes=rng.dirichlet(np.array([1.2, 2.0, 1.6, 0.8]) * 2.0),
        loop=float(rng.choice([0.0, 0.04, 0.1, 0.18])),
        hook=float(rng.choice([0.0, 0.0, 0.1, 0.25])),
        dot=float(rng.choice([0.0, 0.0, 0.1, 0.25])),
        connect=float(rng.uniform(0.55, 0.9)),
        width=float(rng.uniform(0.85, 1.2)),
        aspect=float(rng.uniform(0.8, 1.15)),
        reuse=float(rng.uniform(0.15, 0.5)),
    )
    for _ in range(int(rng.integers(2, 6))):
        path = _node_path(rng, style, set(), None)
        if path is not None:
            style.radicals.append(path)
    return style


def _moves(style: _Style) -> tuple[list[tuple[int, int]], np.ndarray]:
    groups = (_ORTHO, _DIAG, _LONG, _KNIGHT)
    moves, weights = [], []
    for group, w in zip(groups, style.move_weights):
        moves += group
        weights += [w / len(group)] * len(group)
    return moves, np.asarray(weights)


def _node_path(rng: np.random.Generator, style: _Style, edges: set, start) -> list[tuple[int, int]] | None:
    """A walk of 1-3 legs between grid anchors, not reusing an edge the character already has."""
    gx, gy = style.grid
    node = start if start is not None else (int(rng.integers(gx)), int(rng.integers(gy)))
    path = [node]
    moves, weights = _moves(style)
    num_legs = 1 + int(rng.choice(3, p=style.legs))
    for _ in range(num_legs):
        ok = []
        for (dx, dy), w in zip(moves, weights):
            nxt = (node[0] + dx, node[1] + dy)
            if not (0 <= nxt[0] < gx and 0 <= nxt[1] < gy):
                continue
            if frozenset((node, nxt)) in edges or nxt in path:
                continue
            ok.append((nxt, w))
        if not ok:
            break
        p = np.array([w for _, w in ok])
        node = ok[int(rng.choice(len(ok), p=p / p.sum()))][0]
        path.append(node)
    return path if len(path) > 1 else None


def _anchor(node, style: _Style) -> np.ndarray:
    gx, gy = style.grid
    x = -1 + 2 * node[0] / (gx - 1)
    y = -1 + 2 * node[1] / (gy - 1)
    return np.array([x * style.aspect, y])


def _path_stroke(rng, style: _Style, path) -> tuple[np.ndarray, np.ndarray]:
    """Control points and smoothness for a node path: nodes plus a (possibly bowed) midpoint per leg."""
    pts, smooth = [_anchor(path[0], style)], [1.0]
    sign = rng.choice([-1, 1])
    for i in range(1, len(path)):
        a, b = _anchor(path[i - 1], style), _anchor(path[i], style)
        d = b - a
        normal = np.array([-d[1], d[0]])
        bow = 0.0
        if rng.random() < style.curve:
            bow = sign * style.bulge * rng.uniform(0.6, 1.3)
            if rng.random() < 0.3:
                sign = -sign
        pts += [(a + b) / 2 + normal * bow, b]
        smooth += [1.0, 1.0]
        if i > 1:
            smooth[-3] = 0.0 if rng.random() < style.corner else 1.0
    pts_a, smooth_a = np.array(pts), np.array(smooth)
    if len(pts_a) <= MAX_POINTS - 2 and rng.random() < style.hook:
        d = pts_a[-1] - pts_a[-2]
        d = d / (np.linalg.norm(d) + 1e-9)
        turn = rng.choice([-1, 1]) * rng.uniform(1.6, 2.4)
        r = rng.uniform(0.18, 0.3)
        d2 = np.array([math.cos(turn) * d[0] - math.sin(turn) * d[1], math.sin(turn) * d[0] + math.cos(turn) * d[1]])
        p1 = pts_a[-1] + (d + d2) / np.linalg.norm(d + d2 + 1e-9) * r * 0.8
        p2 = p1 + d2 * r
        pts_a = np.concatenate([pts_a, [p1, p2]])
        smooth_a = np.concatenate([smooth_a, [1.0, 1.0]])
    return pts_a, smooth_a


def _loop_stroke(rng, style: _Style) -> tuple[np.ndarray, np.ndarray]:
    """A closed loop around a grid cell or hanging from an anchor, about half a cell to a cell wide."""
    gx, gy = style.grid
    cell = np.array([2 / (gx - 1) * style.aspect, 2 / (gy - 1)])
    centre = _anchor((int(rng.integers(gx)), int(rng.integers(gy))), style)
    if rng.random() < 0.5:
        centre = centre + cell / 2 * rng.choice([-1, 1], 2)
    radius = cell / 2 * rng.uniform(0.45, 0.9) * np.array([1.0, rng.uniform(0.75, 1.25)])
    n = 7
    t = rng.uniform(0, 2 * math.pi) + np.linspace(0, 2 * math.pi * rng.uniform(1.0, 1.08), n) * rng.choice([-1, 1])
    return np.stack([centre[0] + radius[0] * np.cos(t), centre[1] + radius[1] * np.sin(t)], 1), np.ones(n)


def _dot_stroke(rng, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = ink.min(0), ink.max(0)
    side = rng.integers(4)
    p = rng.uniform(lo, hi)
    gap = 0.35
    p = [np.array([p[0], lo[1] - gap]), np.array([p[0], hi[1] + gap]), np.array([lo[0] - gap, p[1]]),
         np.array([hi[0] + gap, p[1]])][side]
    return np.stack([p, p + rng.normal(0, 0.05, 2)]), np.ones(2)


def _hermite_dense(ctrl: np.ndarray, smooth: np.ndarray, n: int = 8) -> np.ndarray:
    """Dense points of one stroke (numpy, for layout)."""
    pts = np.asarray(ctrl, dtype=float)
    prev = np.concatenate([pts[:1], pts[:-1]])
    nxt = np.concatenate([pts[1:], pts[-1:]])
    m = (nxt - prev) / 2 * np.asarray(smooth)[:, None]
    t = np.linspace(0, 1, n)[:, None]
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    return np.concatenate([h00 * pts[j] + h10 * m[j] + h01 * pts[j + 1] + h11 * m[j + 1]
                           for j in range(len(pts) - 1)])


def _character(rng: np.random.Generator, style: _Style) -> tuple[list, tuple]:
    """1-4 strokes, normalized to fit [-BOX, BOX]^2; also a signature to keep characters distinct."""
    num = 1 + int(rng.choice(MAX_STROKES, p=style.strokes))
    strokes, edges, nodes, signature = [], set(), [], []
    legs = 0
    for i in range(num):
        if legs >= 5:
            break
        if i > 0 and len(strokes) < MAX_STROKES and rng.random() < style.dot / max(1, num - 1):
            strokes.append(_dot_stroke(rng, np.concatenate([_hermite_dense(*s) for s in strokes])))
            signature.append(("dot",))
            continue
        if not any(sig[0] == "loop" for sig in signature) and rng.random() < style.loop:
            strokes.append(_loop_stroke(rng, style))
            signature.append(("loop", round(float(strokes[-1][0][:, 0].mean()), 1)))
            continue
        path = None
        if style.radicals and rng.random() < style.reuse:
            cand = style.radicals[int(rng.integers(len(style.radicals)))]
            if not any(frozenset((a, b)) in edges for a, b in zip(cand, cand[1:])):
                path = list(cand)
        if path is None:
            start = None
            if nodes and rng.random() < style.connect:
                start = nodes[int(rng.integers(len(nodes)))]
            path = _node_path(rng, style, edges, start)
        if path is None:
            continue
        legs += len(path) - 1
        edges.update(frozenset((a, b)) for a, b in zip(path, path[1:]))
        nodes += path
        strokes.append(_path_stroke(rng, style, path))
        signature.append(tuple(path))
    if not strokes:
        path = _node_path(rng, style, set(), None) or [(0, 0), (style.grid[0] - 1, 0)]
        strokes.append(_path_stroke(rng, style, path))
        signature.append(tuple(path))
    ink = np.concatenate([_hermite_dense(*s) for s in strokes])
    lo, hi = ink.min(0), ink.max(0)
    centre = (lo + hi) / 2
    scale = 2 * BOX / max(float((hi - lo).max()), 0.6)
    return [((pts - centre) * scale, sm) for pts, sm in strokes], tuple(sorted(signature, key=str))


def _complexity(signature) -> float:
    """Legs of straight or bowed strokes, a loop counting two, a dot half: single bars are rare in real scripts."""
    return sum(2.0 if sig[0] == "loop" else 0.5 if sig[0] == "dot" else len(sig) - 1 for sig in signature)


def _pseudo_name(rng: np.random.Generator, used: set) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if name not in used:
            used.add(name)
            return name


def _prototypes(config: GlyphConfig):
    rng = np.random.default_rng([config.seed, 0x61796C67])
    n_chars = config.num_characters
    ctrl = np.zeros((n_chars, MAX_STROKES, MAX_POINTS, 2))
    smooth = np.zeros((n_chars, MAX_STROKES, MAX_POINTS))
    npts = np.zeros((n_chars, MAX_STROKES), dtype=np.int64)
    widths = np.ones(n_chars)
    names, groups, used = [], [], set()
    c = 0
    for _ in range(config.num_alphabets):
        style = _make_style(rng)
        alphabet = _pseudo_name(rng, used)
        seen = set()
        for j in range(config.characters_per_alphabet):
            for _attempt in range(40):
                strokes, sig = _character(rng, style)
                if sig not in seen and (_complexity(sig) >= 2 or rng.random() < 0.05):
                    break
            seen.add(sig)
            for s, (pts, sm) in enumerate(strokes[:MAX_STROKES]):
                n = min(len(pts), MAX_POINTS)
                ctrl[c, s, :n], smooth[c, s, :n], npts[c, s] = pts[:n], sm[:n], n
                ctrl[c, s, n:] = pts[n - 1]
            widths[c] = style.width
            names.append(f"{alphabet}/character{j + 1:02d}")
            groups.append(alphabet)
            c += 1
    return ctrl, smooth, npts, widths, names, groups


# --------------------------------------------------------------------------------------------------------------
# Samples and rendering (vectorized)


def _sample_controls(ctrl, smooth, npts, samples: int, rng: np.random.Generator):
    """One drawer per sample: control points [C, N, S, K, 2], smoothness [C, N, S, K], pen width factor [C, N]."""
    n_chars = ctrl.shape[0]
    shape = (n_chars, samples)
    pts = np.broadcast_to(ctrl[:, None], shape + ctrl.shape[1:]).copy()
    pts += rng.normal(0, 0.045, pts.shape)
    valid = (np.arange(MAX_POINTS)[None, None, :] < npts[:, :, None])[:, None, :, :, None]
    centre = (pts * valid).sum(3, keepdims=True) / np.maximum(valid.sum(3, keepdims=True), 1)
    stroke_scale = rng.normal(1, 0.06, shape + (MAX_STROKES, 1, 1))
    pts = (pts - centre) * stroke_scale + centre + rng.normal(0, 0.04, shape + (MAX_STROKES, 1, 2))
    rot = rng.normal(0, 0.09, shape)
    sx = np.exp(rng.normal(0, 0.08, shape))
    sy = sx * np.exp(rng.normal(0, 0.06, shape))
    shear = rng.normal(0, 0.1, shape)
    cos, sin = np.cos(rot), np.sin(rot)
    a = np.stack([np.stack([cos * sx, (cos * shear - sin) * sy], -1),
                  np.stack([sin * sx, (sin * shear + cos) * sy], -1)], -2)  # rotation @ shear @ scale
    shift = rng.normal(0, 0.06, shape + (2,))
    pts = np.einsum("cnij,cnskj->cnski", a, pts) + shift[:, :, None, None, :]
    idx = np.minimum(np.arange(MAX_POINTS)[None, :], np.maximum(npts - 1, 0)[:, :, None])  # re-pad ends
    pts = np.take_along_axis(pts, np.broadcast_to(idx[:, None, :, :, None], pts.shape), axis=3)
    sm = np.clip(np.broadcast_to(smooth[:, None], shape + smooth.shape[1:]) + rng.normal(0, 0.15, shape + (1, 1)),
                 0, 1)
    width = np.exp(rng.normal(0, 0.12, shape))
    return pts, sm, width


def _hermite_basis(n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)
    return np.stack([2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2])  # [4, T]


def render_strokes(pts: np.ndarray, smooth: np.ndarray, npts: np.ndarray, sigma: np.ndarray, size: int,
                   gain: float = 3.2) -> np.ndarray:
    """pts [B, S, K, 2] (box units, y down), smooth [B, S, K], npts [B, S], sigma [B] (pen, pixels)
    -> ink float32 [B, size, size] in [0, 1].

    numpy on purpose: its elementwise kernels are single-threaded, which on a small, busy CPU beats torch's
    thread pool on these many small arrays (2.3 s vs 7 s for the default set on a loaded 2-core machine).
    """
    f32 = np.float32
    pts, smooth, sigma = pts.astype(f32), smooth.astype(f32), sigma.astype(f32)
    b, s, k, _ = pts.shape
    prev = np.concatenate([pts[:, :, :1], pts[:, :, :-1]], 2)
    nxt = np.concatenate([pts[:, :, 1:], pts[:, :, -1:]], 2)
    m = (nxt - prev) * (smooth * f32(0.5))[..., None]
    h = _hermite_basis(SEG_SAMPLES).astype(f32)[:, :, None]  # [4, T, 1]
    dense = (pts[:, :, :-1, None] * h[0] + m[:, :, :-1, None] * h[1] + pts[:, :, 1:, None] * h[2]
             + m[:, :, 1:, None] * h[3])  # [B, S, K-1, T, 2]
    # segments past a stroke's end collapse onto its last point
    seg_ok = np.arange(k - 1)[None, None, :] < (npts - 1)[..., None]  # [B, S, K-1]
    last = np.maximum(npts - 1, 0)
    end = np.take_along_axis(pts, last[:, :, None, None].repeat(2, 3), 2)  # [B, S, 1, 2]
    dense = np.where(seg_ok[..., None, None], dense, end[:, :, :, None, :])
    dense = dense.reshape(b, s, -1, 2) * f32(size * 0.42) + f32(size / 2)  # pixels
    # all strokes of an image as one path; the jumps between strokes carry no ink
    d = np.diff(dense, axis=2)
    step = np.sqrt((d * d).sum(-1))  # [B, S, N-1]
    step = np.concatenate([step, np.zeros((b, s, 1), f32)], 2).reshape(b, -1)[:, :-1]
    cum = np.concatenate([np.zeros((b, 1), f32), np.cumsum(step, 1, dtype=f32)], 1)  # [B, M]
    flat = dense.reshape(b, -1, 2)
    n = flat.shape[1]
    total = cum[:, -1:]
    target = np.linspace(0, 1 - 1e-6, INK_POINTS, dtype=f32)[None] * total  # stays on the last real ink
    # batched searchsorted: offset every row so the flattened array is sorted
    offset = (np.arange(b, dtype=np.float64) * (float(total.max()) + 1.0))[:, None]
    hi = np.searchsorted((cum + offset).ravel(), (target + offset).ravel(), side="right").reshape(b, -1)
    hi = np.clip(hi - np.arange(b)[:, None] * n, 1, n - 1)
    lo = hi - 1
    c_lo, c_hi = np.take_along_axis(cum, lo, 1), np.take_along_axis(cum, hi, 1)
    frac = np.clip((target - c_lo) / np.maximum(c_hi - c_lo, f32(1e-12)), 0, 1)[..., None]
    p_lo = np.take_along_axis(flat, lo[..., None].repeat(2, 2), 1)
    p_hi = np.take_along_axis(flat, hi[..., None].repeat(2, 2), 1)
    ink = p_lo + frac * (p_hi - p_lo)  # [B, P, 2]
    w = np.repeat(total / f32(INK_POINTS - 1), INK_POINTS, 1)
    w[:, 0] *= 0.5
    w[:, -1] *= 0.5
    # round pen caps: sqrt(pi / 2) sigma more weight at both ends of every stroke tops a line end up to full ink
    cap = f32(1.2533) * sigma[:, None] * (npts >= 1)
    ink = np.concatenate([ink, dense[:, :, 0], dense[:, :, -1]], 1)
    w = np.concatenate([w, cap, cap], 1).astype(f32)
    grid = np.arange(size, dtype=f32) + f32(0.5)
    inv = (f32(-0.5) / (sigma * sigma))[:, None, None]

    def gauss(coord: np.ndarray) -> np.ndarray:
        g = grid - coord[..., None]  # [B, P, size]
        g *= g
        g *= inv
        np.maximum(g, f32(-20.0), out=g)  # no denormals in the products below
        return np.exp(g, out=g)

    gx = gauss(ink[..., 0])
    gy = gauss(ink[..., 1])
    gy *= (w / (f32(math.sqrt(2 * math.pi)) * sigma[:, None]))[..., None]
    density = np.matmul(gy.transpose(0, 2, 1), gx)  # [B, H, W]
    density *= f32(-gain)
    return f32(1) - np.exp(density, out=density)


def generate_glyphs(config: GlyphConfig | None = None, progress=None, cancel=None) -> ImageSet:
    """Generate the set (no cache). progress(done, total) counts characters; cancel as in load_image_set."""
    config = config or GlyphConfig()
    t0 = time.perf_counter()
    ctrl, smooth, npts, widths, names, groups = _prototypes(config)
    rng = np.random.default_rng([config.seed, 0x706D6173])
    n_chars, n_samp, size = config.num_characters, config.samples, config.size
    pixels = np.empty((n_chars * n_samp, 1, size, size), dtype=np.uint8)
    chunk = max(1, 2048 // n_samp)
    base_sigma = 0.45 * size / 28
    for start in range(0, n_chars, chunk):
        if _cancel_requested(cancel):
            raise LoadCancelled("glyph generation was cancelled")
        stop = min(n_chars, start + chunk)
        pts, sm, width = _sample_controls(ctrl[start:stop], smooth[start:stop], npts[start:stop], n_samp, rng)
        b = (stop - start) * n_samp
        img = render_strokes(pts.reshape(b, MAX_STROKES, MAX_POINTS, 2), sm.reshape(b, MAX_STROKES, MAX_POINTS),
                             np.repeat(npts[start:stop], n_samp, 0),
                             (width * widths[start:stop, None] * base_sigma).reshape(b), size)
        img *= 255
        img += 0.5
        pixels[start * n_samp:stop * n_samp, 0] = np.clip(img, 0, 255).astype(np.uint8)
        if progress is not None and progress(stop, n_chars) is False:
            raise LoadCancelled("glyph generation was cancelled")
    offsets = np.arange(n_chars + 1, dtype=np.int64) * n_samp
    prep = Preprocessing(size=(size, size), mode="grayscale", invert=False)
    report = LoadReport(source="glyphs", layout="alphabet/character", num_classes=n_chars,
                        num_images=len(pixels), inverted=False, seconds=time.perf_counter() - t0)
    meta = {"generator": "maml_lab.core.tasks.glyphs", "glyph_version": GLYPH_VERSION, "glyph_config": asdict(config)}
    return ImageSet("glyphs", names, groups, pixels, offsets, prep, f"glyphs:seed={config.seed}", report, meta)


def load_glyphs(config: GlyphConfig | None = None, *, cache_dir: str | os.PathLike | None = None,
                use_cache: bool = True, progress=None, cancel=None) -> ImageSet:
    """The glyph set for `config`, from the cache when it was generated before (same cache as image sets)."""
    config = config or GlyphConfig()
    t0 = time.perf_counter()
    cache_file = None
    if use_cache:
        cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        prep = Preprocessing(size=(config.size, config.size), mode="grayscale", invert=False)
        key = cache_key({"kind": "glyphs", "version": GLYPH_VERSION, **asdict(config)}, prep)
        cache_file = cdir / f"glyphs-{key}.npz"
        cached = load_cache(cache_file)
        if cached is not None:
            if progress is not None:
                progress(cached.num_classes, cached.num_classes)
            if cached.report is not None:
                cached.report.from_cache, cached.report.cache_file = True, str(cache_file)
                cached.report.seconds = time.perf_counter() - t0
            return cached
    image_set = generate_glyphs(config, progress=progress, cancel=cancel)
    if cache_file is not None and image_set.report is not None:
        image_set.report.cache_file = str(cache_file) if save_cache(cache_file, image_set) else None
    return image_set
