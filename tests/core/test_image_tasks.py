"""N-way K-shot sampling from an ImageSet: shapes, labels, shuffling, reproducibility, refusals, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.images import ImageTaskFamily
from maml_lab.core.tasks.imagesets import ImageSet, Preprocessing, load_image_set

SMALL1 = Path(__file__).resolve().parents[3] / "shared" / "omniglot" / "images_background_small1.zip"


def _coded_set(num_classes=12, counts=None) -> ImageSet:
    """Every image of class c has all pixels = c, and pixel [0, 0] = its index within the class."""
    counts = counts or [6 + c % 4 for c in range(num_classes)]
    blocks = []
    for c, n in enumerate(counts):
        b = np.full((n, 1, 5, 5), c, dtype=np.uint8)
        b[:, 0, 0, 0] = np.arange(n) + 100
        blocks.append(b)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return ImageSet("coded", [f"c{c}" for c in range(num_classes)], None, np.concatenate(blocks), offsets,
                    Preprocessing(size=(5, 5)))


def test_shapes_labels_and_content():
    s = _coded_set()
    fam = ImageTaskFamily(s, ways=4)
    assert fam.name == "images" and fam.loss == "cross_entropy"
    assert fam.input_shape == (1, 5, 5) and fam.output_dim == 4
    g = torch.Generator().manual_seed(0)
    batch = fam.sample(8, 2, 3, g, dtype=torch.float64)
    assert isinstance(batch, TaskBatch)
    assert batch.x_support.shape == (8, 8, 1, 5, 5) and batch.x_query.shape == (8, 12, 1, 5, 5)
    assert batch.y_support.shape == (8, 8) and batch.y_query.shape == (8, 12)
    assert batch.x_support.dtype == torch.float64 and batch.y_support.dtype == torch.long
    assert 0.0 <= batch.x_support.min() and batch.x_support.max() <= 1.0
    classes = batch.info["classes"]
    assert classes.shape == (8, 4)
    for b in range(8):
        assert len(set(classes[b].tolist())) == 4  # distinct classes per task
        # label balance: K per label in the support set, Q per label in the query set
        assert torch.bincount(batch.y_support[b], minlength=4).tolist() == [2] * 4
        assert torch.bincount(batch.y_query[b], minlength=4).tolist() == [3] * 4
        for x, y in ((batch.x_support[b], batch.y_support[b]), (batch.x_query[b], batch.y_query[b])):
            # every image shows the class its label stands for
            coded = torch.round(x[:, 0, 2, 2] * 255).long()
            assert torch.equal(coded, classes[b][y])
        # support and query images of a class are distinct images
        for j in range(4):
            ids = torch.cat([batch.x_support[b][batch.y_support[b] == j][:, 0, 0, 0],
                             batch.x_query[b][batch.y_query[b] == j][:, 0, 0, 0]])
            assert len(set(torch.round(ids * 255).long().tolist())) == 5
    rows = torch.cat([batch.info["support_rows"], batch.info["query_rows"]], 1)
    assert rows.shape == (8, 20)
    one = batch.task(3)
    assert one.x_support.shape[0] == 1 and torch.equal(one.info["classes"][0], classes[3])


def test_per_task_label_shuffling_and_coverage():
    fam = ImageTaskFamily(_coded_set(num_classes=6), ways=3)
    batch = fam.sample(200, 1, 1, torch.Generator().manual_seed(1))
    classes = batch.info["classes"]
    # the same class gets different labels in different tasks, and every class is used
    labels_of_class0 = {int(j) for b, j in zip(*torch.nonzero(classes == 0, as_tuple=True))}
    assert labels_of_class0 == {0, 1, 2}
    assert set(classes.flatten().tolist()) == set(range(6))
    # not sorted: the label order is random
    assert not bool((classes[:, 1:] > classes[:, :-1]).all())


def test_reproducible_from_generator():
    fam = ImageTaskFamily(_coded_set(), ways=5)
    a = fam.sample(4, 1, 2, torch.Generator().manual_seed(7))
    b = fam.sample(4, 1, 2, torch.Generator().manual_seed(7))
    c = fam.sample(4, 1, 2, torch.Generator().manual_seed(8))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert torch.equal(a.info["classes"], b.info["classes"])
    assert not torch.equal(a.info["classes"], c.info["classes"])


def test_refusals_name_the_numbers():
    s = _coded_set(num_classes=3)
    with pytest.raises(ValueError, match=r"5-way tasks need at least 5 classes, but 'coded' has 3"):
        ImageTaskFamily(s, ways=5)
    fam = ImageTaskFamily(_coded_set(num_classes=5, counts=[6, 6, 4, 6, 6]), ways=5)
    with pytest.raises(ValueError, match=r"1 shots \+ 5 queries need 6 images per class.*'c2' has 4"):
        fam.sample(2, 1, 5, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="1 shots"):
        fam.validate(1, 5)
    fam.validate(1, 3)
    with pytest.raises(ValueError):
        fam.sample(0, 1, 1, torch.Generator())


def test_describe_has_preprocessing():
    d = ImageTaskFamily(_coded_set(), ways=5).describe()
    assert d["name"] == "images" and d["ways"] == 5 and d["input_shape"] == [1, 5, 5]
    assert d["preprocessing"]["size"] == [5, 5] and d["image_set"]["num_classes"] == 12


@pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
def test_omniglot_sampling_is_fast(tmp_path):
    s = load_image_set(SMALL1, cache_dir=tmp_path).with_rotations()
    fam = ImageTaskFamily(s, ways=5)
    g = torch.Generator().manual_seed(0)
    batch = fam.sample(32, 1, 5, g)
    assert batch.x_support.shape == (32, 5, 1, 28, 28) and batch.x_query.shape == (32, 25, 1, 28, 28)
    t = time.perf_counter()
    for _ in range(20):
        fam.sample(32, 1, 5, g)
    per_batch = (time.perf_counter() - t) / 20
    assert per_batch < 0.1, f"sampling took {per_batch * 1e3:.1f} ms per batch"
