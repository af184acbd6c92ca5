"""Small synthetic files in the formats users already have (learn2learn's pickles, torchmeta's HDF5, Omniglot's zips),
for the tests of the readers and of the CLI on them."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def miniimagenet_dict(classes: int = 3, per_class: int = 4, size: int = 84, seed: int = 0, prefix: str = "n0") -> dict:
    """learn2learn's layout: {"image_data": uint8 [N, size, size, 3], "class_dict": {wnid: [rows]}}, each class a
    colour of its own (so a test can tell them apart), rows interleaved as in the real files."""
    rng = np.random.default_rng(seed)
    n = classes * per_class
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    class_dict = {}
    for c in range(classes):
        rows = list(range(c, n, classes))
        class_dict[f"{prefix}{c:07d}"] = rows
        base = rng.integers(0, 256, size=3)
        for r in rows:
            images[r] = np.clip(base + rng.integers(-20, 21, size=(size, size, 3)), 0, 255)
    return {"image_data": images, "class_dict": class_dict}


def write_pickle(path: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_hdf5(folder: Path, split: str = "train", classes: int = 3, per_class: int = 4, size: int = 84,
               seed: int = 0) -> Path:
    """torchmeta's layout: {split}_data.hdf5 with a uint8 [n, size, size, 3] dataset per class under "datasets",
    and {split}_labels.json with the class names."""
    import h5py

    d = miniimagenet_dict(classes, per_class, size, seed, prefix=f"n{split[:2]}")
    path = folder / f"{split}_data.hdf5"
    with h5py.File(path, "w") as f:
        group = f.create_group("datasets")
        for name, rows in d["class_dict"].items():
            group.create_dataset(name, data=d["image_data"][rows])
    (folder / f"{split}_labels.json").write_text(json.dumps(list(d["class_dict"])))
    return path


def _png(value: int, size: int = 8, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.full((size, size), 255, dtype=np.uint8)
    a[rng.random((size, size)) < 0.3] = value  # dark strokes on white, as Omniglot draws them
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def omniglot_zip(path: Path, top: str, alphabets: dict[str, int], per_class: int = 2) -> Path:
    """An Omniglot-shaped zip: top/<alphabet>/character<NN>/<id>_<drawer>.png, `alphabets` {name: characters}."""
    pngs = [_png(i * 10 % 200, seed=i) for i in range(16)]
    k = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for d in range(1, per_class + 1):
                    z.writestr(f"{top}/{alphabet}/character{c:02d}/{k:04d}_{d:02d}.png", pngs[k % len(pngs)])
                k += 1
    return path


def full_omniglot_pair(folder: Path) -> tuple[Path, Path]:
    """images_background.zip (964 characters, 30 alphabets) and images_evaluation.zip (659, 20): the full Omniglot's
    counts, two tiny drawings a character."""
    background = {f"Background{a:02d}": 32 + (a < 4) for a in range(30)}  # 30 x 32 + 4 = 964
    evaluation = {f"Evaluation{a:02d}": 32 + (a < 19) for a in range(20)}  # 20 x 32 + 19 = 659
    assert sum(background.values()) == 964 and sum(evaluation.values()) == 659
    return (omniglot_zip(folder / "images_background.zip", "images_background", background),
            omniglot_zip(folder / "images_evaluation.zip", "images_evaluation", evaluation))


class RunsCode:
    """Pickles as a call of os.system: what a hostile pickle does when it is loaded by pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
