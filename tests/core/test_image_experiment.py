"""Image experiments end to end in the engine: task-aware defaults, train / held-out split, training, export of
conv-4 initializations into plain PyTorch, and held-out evaluation rebuilt from the metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.export import load_initialization
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.images import (
    accuracy_after_steps,
    format_accuracy,
    heldout_family_from_metadata,
    image_family_from_config,
)
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer, make_family, make_model

SMALL1 = Path(__file__).resolve().parents[3] / "shared" / "omniglot" / "images_background_small1.zip"
needs_small1 = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")


@pytest.fixture(scope="module", autouse=True)
def _private_cache_one_thread(tmp_path_factory):
    """Decoded sets are cached once for the module, away from the user's cache; one torch thread keeps these
    small convolutions fast on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


def images(**kw) -> ExperimentConfig:
    base = dict(task="images", image_size=14, meta_batch_size=3, iterations=3, val_every=0, val_tasks=4)
    base.update(kw)
    return ExperimentConfig(**base)


def test_task_aware_defaults_follow_the_maml_paper_tuned_for_time_to_accuracy():
    c = ExperimentConfig(task="images")
    assert (c.meta_batch_size, c.shots, c.queries, c.iterations, c.ways) == (32, 1, 5, 800, 5)
    (maml,) = c.algorithms
    assert (maml.name, maml.inner_lr, maml.inner_steps, maml.test_inner_steps, maml.meta_lr,
            maml.meta_lr_schedule) == ("maml", 0.4, 1, 3, 3e-3, "cosine")
    # the paper's own settings are one preset away, and the algorithms with their own rules keep them
    from maml_lab.core.training.config import apply_preset

    paper = ExperimentConfig.from_dict(apply_preset({"task": "images", "algorithms": {"maml": {}}}, "images",
                                                    "paper"))
    assert paper.iterations == 60000 and paper.meta_batch_size == 32
    assert (paper.algorithm("maml").meta_lr, paper.algorithm("maml").meta_lr_schedule) == (1e-3, "constant")
    for name in ("fomaml", "anil", "boil"):
        assert AlgorithmConfig.defaults(name, task="images").meta_lr == 3e-3
    assert AlgorithmConfig.defaults("metasgd", task="images").meta_lr == 1e-3
    assert AlgorithmConfig.defaults("maml", task="sinusoid").meta_lr_schedule == "constant"
    s = ExperimentConfig()
    assert (s.meta_batch_size, s.shots, s.queries, s.iterations) == (25, 10, 10, 70000)
    assert s.algorithms[0].inner_lr == 0.01 and s.algorithms[0].test_inner_steps == 10
    # what the user sets wins; the rest follows the task
    c = ExperimentConfig.from_dict({"task": "images", "shots": 5, "algorithms": {"maml": {"inner_lr": 0.1},
                                                                                 "reptile": {}}})
    assert c.shots == 5 and c.meta_batch_size == 32
    assert c.algorithm("maml").inner_lr == 0.1 and c.algorithm("maml").test_inner_steps == 3
    assert c.algorithm("reptile").inner_steps == 5 and c.algorithm("reptile").inner_lr == 0.001  # supervised-reptile
    assert AlgorithmConfig.defaults("fomaml", task="images").inner_lr == 0.4
    assert AlgorithmConfig.defaults("reptile").inner_steps == 5  # sinusoid default unchanged
    again = ExperimentConfig.from_dict(c.to_dict())
    assert again.to_dict() == c.to_dict()
    with pytest.raises(ValueError, match="unknown task"):
        ExperimentConfig.from_dict({"task": "audio"})
    with pytest.raises(ValueError, match="image_mode"):
        ExperimentConfig(task="images", image_mode="cmyk")


def test_glyph_family_split_is_deterministic_disjoint_and_described():
    train = image_family_from_config(images())
    heldout = image_family_from_config(images(), split="heldout")
    assert train.validation_family is not None
    assert heldout.image_set.class_names == train.validation_family.image_set.class_names
    train_names = {n.split("@")[0] for n in train.image_set.class_names}
    held_names = set(heldout.image_set.class_names)
    assert not train_names & held_names
    split = train.info["split"]
    assert split["train_classes"] + split["heldout_classes"] == 1200 and split["heldout_classes"] == 360
    assert train.image_set.num_classes == 4 * split["train_classes"]  # rotations
    assert heldout.info["rotations"] == []
    d = train.describe()
    assert d["name"] == "images" and d["ways"] == 5 and d["data"] is None and d["source"] == "glyphs"
    assert d["split"]["seed"] == 0 and d["split"]["part"] == "train" and d["rotations"] == [90, 180, 270]
    assert d["preprocessing"]["size"] == [14, 14] and d["preprocessing"]["mode"] == "grayscale"
    assert d["preprocessing"]["normalization"] == "unit" and "stroke_polarity" in d["preprocessing"]
    assert d["glyph_config"]["size"] == 14
    again = image_family_from_config(images(rotations=False))
    assert again.image_set.num_classes == split["train_classes"]
    assert again.image_set.class_names == [n for n in train.image_set.class_names if "@" not in n]


def test_refusals_name_the_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"training classes: 15 shots \+ 10 queries need 25 images per class"):
        image_family_from_config(images(shots=15, queries=10))
    with pytest.raises(ValueError, match="image set not found"):
        image_family_from_config(images(data=str(tmp_path / "missing.zip")))
    with pytest.raises(ValueError, match="glyph set is grayscale"):
        image_family_from_config(images(image_mode="rgb"))


@needs_small1
def test_omniglot_small1_split_and_too_many_ways():
    fam = image_family_from_config(images(data=str(SMALL1)))
    assert fam.info["split"]["train_classes"] == 95 and fam.info["split"]["heldout_classes"] == 41
    assert fam.info["data"] == str(SMALL1.resolve())
    assert fam.describe()["preprocessing"]["invert"] is True  # black strokes on white, inverted
    wide = image_family_from_config(images(data=str(SMALL1), ways=50))  # at least `ways` classes are held out
    assert wide.info["split"]["heldout_classes"] == 50
    with pytest.raises(ValueError, match="70-way tasks need 70 training and 70 held-out classes, but the set has "
                                         "only 136"):
        image_family_from_config(images(data=str(SMALL1), ways=70))


def test_train_export_load_into_plain_pytorch_and_evaluate(tmp_path):
    config = images(algorithms=[AlgorithmConfig.defaults("maml", task="images")], val_every=2)
    family = make_family(config)
    model = make_model(config, family)
    assert isinstance(model, Conv4) and model.spec()["image_size"] == 14 and model.ways == 5
    trainer = Trainer(config, family=family, model=model)
    assert trainer.run() == "finished"
    m = trainer.runs["maml"].last_metrics
    assert 0 <= m["pre_accuracy"] <= 1 and 0 <= m["post_accuracy"] <= 1
    val = trainer.runs["maml"].last_val
    assert "val_post_accuracy" in val and trainer.validation_family is family.validation_family
    out = tmp_path / "init.safetensors"
    trainer.export("maml", out)

    params, meta, loaded = load_initialization(out)  # validated against the conv-4 the metadata describes
    assert isinstance(loaded, Conv4) and loaded.spec() == model.spec()
    task = meta["task"]
    assert task["ways"] == 5 and task["split"]["seed"] == 0 and task["data"] is None
    assert task["preprocessing"]["size"] == [14, 14] and task["preprocessing"]["mode"] == "grayscale"
    assert task["preprocessing"]["normalization"] == "unit" and "stroke_polarity" in task["preprocessing"]
    assert meta["hyperparameters"]["inner_lr"] == 0.4 and meta["hyperparameters"]["test_inner_steps"] == 3

    # plain PyTorch: the nn.Sequential of Conv4.torch_module() loads the file and gives the engine's logits
    module = loaded.torch_module()
    module.load_state_dict(load_file(out))
    x = family.validation_family.sample(2, 1, 3, torch.Generator().manual_seed(0)).x_query
    engine = loaded.forward(params, x)
    with torch.no_grad():
        for i in range(2):
            torch.testing.assert_close(module(x[i]), engine[i], atol=1e-5, rtol=1e-5)
        module.eval()  # no running statistics: eval mode gives the same outputs
        torch.testing.assert_close(module(x[0]), engine[0], atol=1e-5, rtol=1e-5)

    heldout = heldout_family_from_metadata(task)
    assert heldout.image_set.class_names == family.validation_family.image_set.class_names
    acc = accuracy_after_steps(loaded, heldout, params, shots=1, steps=[0, 3], adaptation=0.4, num_tasks=6, queries=3,
                               chunk=4)
    assert set(acc) == {0, 3} and all(0 <= m <= 1 and c >= 0 for m, c in acc.values())
    assert re.fullmatch(r"5-way 1-shot: \d+\.\d% \+- \d+\.\d%", format_accuracy(5, 1, *acc[3]))
    assert format_accuracy(5, 1, 0.9612, 0.0041) == "5-way 1-shot: 96.1% +- 0.4%"


def test_loader_progress_and_cancel():
    import threading

    from maml_lab.core.tasks.imagesets import LoadCancelled

    seen = []
    image_family_from_config(images(), progress=lambda d, t: seen.append((d, t)))  # cached by now
    assert seen and seen[-1][0] == seen[-1][1]
    stop = threading.Event()
    stop.set()
    with pytest.raises(LoadCancelled):
        image_family_from_config(images(image_size=13), cancel=stop)  # not cached: generation stops at once
    if SMALL1.is_file():
        with pytest.raises(LoadCancelled):
            image_family_from_config(images(data=str(SMALL1), image_size=13), cancel=stop)
