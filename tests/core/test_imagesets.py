"""Image set loading: Omniglot zip, class folders, bad files, cache, cancel, splits, rotations, validation."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maml_lab.core.tasks.imagesets import (
    ImageSet,
    LoadCancelled,
    Preprocessing,
    default_cache_dir,
    image_grid,
    load_image_set,
    rotate_classes,
    split_classes,
    validate_task_shape,
)

OMNIGLOT = Path(__file__).resolve().parents[3] / "shared" / "omniglot"
SMALL1 = OMNIGLOT / "images_background_small1.zip"
needs_omniglot = pytest.mark.skipif(not SMALL1.is_file(),
                                    reason=f"Omniglot test data not found at {SMALL1} (shared folder absent)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """No test writes into the real ~/.cache."""
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "env-cache"))


def _png(value: int, size=(12, 12), mode="L", stroke=True) -> bytes:
    im = Image.new(mode, size, 255 if mode == "L" else (255, 255, 255))
    a = np.asarray(im).copy()
    if stroke:
        a[2:-2, size[0] // 2] = value  # a dark vertical stroke on white
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _messy_folder(root: Path) -> Path:
    (root / "alpha").mkdir(parents=True)
    for i in range(3):
        (root / "alpha" / f"{i}.png").write_bytes(_png(0))
    (root / "beta").mkdir()
    for i in range(2):
        (root / "beta" / f"{i}.png").write_bytes(_png(40))
    (root / "beta" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "beta" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.txt").write_text("nothing to see")
    return root


@needs_omniglot
def test_omniglot_small1_zip(tmp_path):
    s = load_image_set(SMALL1, cache_dir=tmp_path / "cache")
    assert s.num_classes == 136 and s.num_images == 2720
    assert s.group_names == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert s.class_names[0] == "Balinese/character01" and s.groups[0] == "Balinese"
    assert np.all(s.counts == 20)
    assert s.image_shape == (1, 28, 28) and s.pixels.dtype == np.uint8
    imgs = s.images
    assert imgs.dtype == np.float32 and imgs.shape == (2720, 1, 28, 28)
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    # strokes 1.0 on a 0.0 background (Omniglot is black on white, so it was inverted)
    assert s.report.inverted and s.preprocessing.invert is True
    assert imgs.mean() < 0.2 and np.median(imgs) == 0.0 and imgs.max() > 0.9
    assert s.report.skipped == [] and s.report.dropped_classes == []
    assert s.report.layout == "alphabet/character"
    d = s.describe()
    assert d["preprocessing"]["size"] == [28, 28] and d["preprocessing"]["mode"] == "grayscale"
    assert d["num_classes"] == 136


@needs_omniglot
def test_cache_second_load_hits(tmp_path):
    cache = tmp_path / "cache"
    first = load_image_set(SMALL1, cache_dir=cache)
    assert not first.report.from_cache and first.report.cache_file
    assert Path(first.report.cache_file).parent == cache
    second = load_image_set(SMALL1, cache_dir=cache)
    assert second.report.from_cache
    assert second.class_names == first.class_names and second.groups == first.groups
    np.testing.assert_array_equal(second.pixels, first.pixels)
    assert second.preprocessing == first.preprocessing
    assert second.report.seconds < first.report.seconds
    # another preprocessing is another cache entry
    other = load_image_set(SMALL1, Preprocessing(size=(20, 20)), cache_dir=cache)
    assert not other.report.from_cache and other.image_shape == (1, 20, 20)
    assert len(list(cache.glob("*.npz"))) == 2


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "imagesets"
    monkeypatch.delenv("MAML_LAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "maml_lab" / "imagesets"


def test_bad_files_skipped_and_reported(tmp_path):
    root = _messy_folder(tmp_path / "set")
    before = _snapshot(root)
    s = load_image_set(root, cache_dir=tmp_path / "cache")
    assert _snapshot(root) == before  # nothing written into the user's folder
    assert s.class_names == ["alpha", "beta"] and list(s.counts) == [3, 2]
    skipped = dict(s.report.skipped)
    assert skipped["beta/broken.png"].startswith("cannot decode")
    assert skipped["beta/notes.txt"] == "not an image file"
    assert skipped["only_text/readme.txt"] == "not an image file"
    assert sorted(s.report.dropped_classes) == ["empty", "only_text"]
    assert s.report.layout == "class folders" and s.groups == ["", ""]
    assert "2 classes, 5 images" in s.report.summary()
    # the same set zipped (with a top folder) gives the same classes and report
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(root.rglob("*")):
            z.write(p, "top/" + str(p.relative_to(root)))
    zs = load_image_set(zpath, cache_dir=tmp_path / "cache")
    assert zs.class_names == ["alpha", "beta"]
    np.testing.assert_array_equal(zs.pixels, s.pixels)
    assert sorted(zs.report.dropped_classes) == ["empty", "only_text"]
    assert dict(zs.report.skipped).keys() == {"top/beta/broken.png", "top/beta/notes.txt", "top/only_text/readme.txt"}


def test_omniglot_folder_layout_and_formats(tmp_path):
    root = tmp_path / "omni"
    for alphabet in ("Aleph", "Beth"):
        for ch in ("character01", "character02"):
            d = root / alphabet / ch
            d.mkdir(parents=True)
            for i, ext in enumerate(("png", "bmp", "gif", "jpg")):
                Image.open(io.BytesIO(_png(0, size=(30, 30)))).save(d / f"{i}.{ext}")
    s = load_image_set(root, Preprocessing(size=(14, 14)), use_cache=False)
    assert s.class_names == ["Aleph/character01", "Aleph/character02", "Beth/character01", "Beth/character02"]
    assert s.groups == ["Aleph", "Aleph", "Beth", "Beth"] and list(s.counts) == [4] * 4
    assert s.image_shape == (1, 14, 14) and s.report.inverted
    assert s.report.layout == "alphabet/character"


def test_rgb_mode(tmp_path):
    root = tmp_path / "rgb"
    rng = np.random.default_rng(0)
    for c in ("n001", "n002"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    s = load_image_set(root, Preprocessing.miniimagenet(size=21), use_cache=False)
    assert s.image_shape == (3, 21, 21) and not s.report.inverted
    assert s.preprocessing.to_dict()["mode"] == "rgb"


def test_missing_and_unusable_sources(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_image_set(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(_png(0))
    with pytest.raises(ValueError, match="no usable classes"):
        load_image_set(tmp_path / "flat", use_cache=False)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="zip"):
        load_image_set(tmp_path / "bad.zip", use_cache=False)


def test_progress_and_cancel(tmp_path):
    root = _messy_folder(tmp_path / "set")
    calls = []
    load_image_set(root, use_cache=False, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (6, 6) and all(d <= t for d, t in calls)
    with pytest.raises(LoadCancelled):
        load_image_set(root, use_cache=False, progress=lambda done, total: False)
    event = threading.Event()
    event.set()
    with pytest.raises(LoadCancelled):
        load_image_set(root, use_cache=False, cancel=event)
    assert not (tmp_path / "env-cache").exists()


def _toy(num_classes=12, per_class=5, groups=3) -> ImageSet:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (num_classes * per_class, 1, 6, 6), dtype=np.uint8)
    names = [f"g{c % groups}/c{c:02d}" for c in range(num_classes)]
    return ImageSet("toy", names, [f"g{c % groups}" for c in range(num_classes)], pixels,
                    np.arange(num_classes + 1) * per_class, Preprocessing(size=(6, 6)))


def test_split_by_class_and_by_group():
    s = _toy()
    parts = split_classes(s, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    assert [p.num_classes for p in parts.values()] == [6, 3, 3]
    names = [set(p.class_names) for p in parts.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and set.union(*names) == set(s.class_names)
    again = s.split({"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    assert again["train"].class_names == parts["train"].class_names
    c = s.class_names.index(parts["val"].class_names[0])
    np.testing.assert_array_equal(parts["val"].class_images(0), s.class_images(c))
    counted = s.split({"train": 8, "test": 4}, seed=0)
    assert counted["train"].num_classes == 8 and counted["test"].num_classes == 4
    by_group = s.split({"train": 2, "test": 1}, seed=0, by_group=True)
    assert len(by_group["train"].group_names) == 2 and len(by_group["test"].group_names) == 1
    assert not set(by_group["train"].groups) & set(by_group["test"].groups)
    with pytest.raises(ValueError, match="13"):
        s.split({"train": 13, "test": 0})


def test_rotations_are_new_classes():
    s = _toy(num_classes=4)
    r = rotate_classes(s)
    assert r.num_classes == 16 and r.num_images == 4 * s.num_images
    assert r.class_names[4] == "g0/c00@90"
    np.testing.assert_array_equal(r.class_images(4), np.rot90(s.class_images(0), 1, axes=(2, 3)))
    np.testing.assert_array_equal(r.class_images(8 + 1), np.rot90(s.class_images(1), 2, axes=(2, 3)))
    assert r.groups[4] == s.groups[0]
    only = s.with_rotations((180,), keep_original=False)
    assert only.num_classes == 4 and all(n.endswith("@180") for n in only.class_names)
    with pytest.raises(ValueError, match="multiples of 90"):
        rotate_classes(s, (45,))


def test_validation_names_the_numbers():
    s = _toy(num_classes=4, per_class=5)
    with pytest.raises(ValueError, match=r"5-way tasks need at least 5 classes, but 'toy' has 4"):
        validate_task_shape(s, 5, 1, 1)
    with pytest.raises(ValueError, match=r"1 shots \+ 5 queries need 6 images per class.*has 5"):
        s.validate(3, 1, 5)
    s.validate(4, 1, 4)  # fits exactly


def test_image_grid_shape():
    s = _toy(num_classes=3, per_class=4)
    g = image_grid(s, [0, 2], per_class=4, pad=1)
    assert g.shape == (2 * 7 + 1, 4 * 7 + 1) and g.dtype == np.uint8


def test_nothing_written_outside_cache(tmp_path, monkeypatch):
    """Default cache location is honoured via the env var; the source folder stays untouched."""
    root = _messy_folder(tmp_path / "set")
    before = _snapshot(root)
    s = load_image_set(root)
    assert Path(s.report.cache_file).parent == tmp_path / "env-cache" / "imagesets"
    assert load_image_set(root).report.from_cache
    assert _snapshot(root) == before
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "env-cache" / "imagesets"))
