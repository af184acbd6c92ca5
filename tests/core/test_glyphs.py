"""The built-in procedural glyph set: deterministic, large enough, cached, and an ImageSet like Omniglot."""

from __future__ import annotations

import numpy as np
import pytest

from maml_lab.core.tasks.glyphs import GlyphConfig, generate_glyphs, load_glyphs
from maml_lab.core.tasks.imagesets import ImageSet

SMALL = GlyphConfig(seed=5, num_alphabets=3, characters_per_alphabet=6, samples=5)


def test_same_seed_same_pixels():
    a = generate_glyphs(SMALL)
    b = generate_glyphs(SMALL)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.class_names == b.class_names and a.groups == b.groups
    c = generate_glyphs(GlyphConfig(seed=6, num_alphabets=3, characters_per_alphabet=6, samples=5))
    assert not np.array_equal(a.pixels, c.pixels)


def test_small_set_shape_and_content():
    s = generate_glyphs(SMALL)
    assert isinstance(s, ImageSet)
    assert s.num_classes == 18 and s.num_images == 90 and s.image_shape == (1, 28, 28)
    assert len(s.group_names) == 3 and s.class_names[0].endswith("/character01")
    ink = s.images.reshape(s.num_images, -1)
    # strokes 1.0 on 0.0: every image has some ink but is mostly background
    assert (ink.max(1) > 0.8).all()
    frac = (ink > 0.5).mean(1)
    assert (frac > 0.02).all() and (frac < 0.4).all()
    assert (ink[:, :28].max(1) < 0.5).mean() > 0.5  # usually a clear margin at the top row
    # samples of one character differ from each other, but less than from other characters
    lo, hi = s.class_range(0)
    same = np.abs(ink[lo] - ink[lo + 1]).mean()
    assert same > 0
    assert not any(np.array_equal(ink[lo], ink[i]) for i in range(lo + 1, hi))
    d = s.describe()
    assert d["preprocessing"]["invert"] is False and d["glyph_config"]["seed"] == 5


def test_default_set_is_large_and_cached(tmp_path):
    first = load_glyphs(cache_dir=tmp_path)
    assert first.num_classes == GlyphConfig().num_characters >= 1000
    assert np.all(first.counts == 20) and first.num_images >= 20_000
    assert len(set(first.class_names)) == first.num_classes
    assert not first.report.from_cache and first.report.cache_file
    second = load_glyphs(cache_dir=tmp_path)
    assert second.report.from_cache
    np.testing.assert_array_equal(second.pixels, first.pixels)
    assert second.class_names == first.class_names
    # characters of an alphabet are distinct drawings: class means differ
    means = first.images[:600].reshape(30, 20, -1).mean(1)
    dist = np.abs(means[:, None] - means[None]).mean(-1)
    assert dist[~np.eye(30, dtype=bool)].min() > 0.01


def test_bad_config():
    with pytest.raises(ValueError):
        GlyphConfig(samples=0)
    with pytest.raises(ValueError):
        GlyphConfig(size=4)
