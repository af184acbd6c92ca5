"""N-way K-shot classification tasks drawn from an ImageSet, with the same interface as SinusoidFamily.

A task picks `ways` distinct classes, gives them labels 0..N-1 in a random order (so a label means nothing
across tasks), and draws shots + queries distinct images of each class. Support and query sets are laid out
class by class: y_support = [0]*K + [1]*K + ... All tasks of a batch are sampled at once with tensor ops.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .base import NoPlayground, TaskBatch, TaskFamilyKind
from .imagesets import ImageSet, Preprocessing, validate_task_shape

# Class split between meta-training and held-out evaluation (same rule in training and in `eval`):
SPLIT_SEED = 0  # the classes are permuted with this seed, independent of the training seed
PAPER_TRAIN_CLASSES = 1200  # MAML paper, Omniglot: 1200 characters train, the other 423 are held out ...
PAPER_MIN_CLASSES = 1500  # ... used when a set has at least this many classes (full Omniglot, 1623)
HELDOUT_FRACTION = 0.3  # otherwise 30% of the classes (at least `ways`) are held out
ROTATIONS = (90, 180, 270)
# Splits (task option `split`, CLI --split): "lab" the rule above; "paper" cbfinn/maml's data_generator.py on the
# full Omniglot: all characters sorted, shuffled by Python's random.Random(1), the first 1,100 meta-train, the next
# 100 validate, the rest (423 of 1,623) are the test classes. A separate held-out set (--eval-data) replaces both.
SPLITS = ("lab", "paper")
CBFINN_SEED, CBFINN_TRAIN, CBFINN_VAL = 1, 1100, 100
# elements conv-4 (64 filters) keeps per input pixel of an image in a meta-step (activations of its four blocks, for
# the memory estimate): about 60 measured on Omniglot 5-way 1-shot, with a margin; proportional to the filters
IMAGE_ACTIVATIONS = 100


class ImageTaskFamily:
    """Few-shot classification tasks over `image_set`; `sample` returns x [B, N*K, C, H, W], y [B, N*K] long."""

    name = "images"
    # cbfinn/maml's loss and batch-norm conventions ("cbfinn") or the lab's ("lab"): the loss below, the conv-4
    # the family's runs build (models/conv4.py) and the export metadata (describe) follow it
    convention = "lab"

    @property
    def loss(self) -> str:
        """What inner and outer loops minimize: the per-task mean cross-entropy (lab), or cbfinn's sum / K."""
        return "cross_entropy_sum" if self.convention == "cbfinn" else "cross_entropy"

    def __init__(self, image_set: ImageSet, ways: int = 5, info: dict | None = None):
        ways = int(ways)
        if ways < 2:
            raise ValueError(f"a classification task needs at least 2 ways, got {ways}")
        if image_set.num_classes < ways:
            raise ValueError(f"{ways}-way tasks need at least {ways} classes, but {image_set.name!r} has "
                             f"{image_set.num_classes}")
        self.image_set = image_set
        self.ways = ways
        self.input_shape = tuple(image_set.image_shape)
        self.output_dim = ways
        self._pixels = torch.from_numpy(image_set.pixels)  # shares memory, uint8
        self._on_device: dict[str, torch.Tensor] = {}
        self._counts = torch.from_numpy(image_set.counts.copy())
        self._offsets = torch.from_numpy(image_set.offsets[:-1].copy())
        self._max_count = int(self._counts.max())
        self.info = dict(info or {})  # where the set came from and how it was split (see image_family_from_config)
        self.validation_family: ImageTaskFamily | None = None  # held-out classes, for validation while training

    def describe(self) -> dict:
        d = {"name": self.name, "ways": self.ways, "input_shape": list(self.input_shape),
             "image_set": self.image_set.describe(), "preprocessing": self.image_set.preprocessing.to_dict()}
        d.update(self.info)
        d["convention"] = self.convention
        return d

    def validate(self, shots: int, queries: int) -> None:
        """Raise ValueError (naming the numbers) if the set cannot supply such tasks."""
        validate_task_shape(self.image_set, self.ways, shots, queries)

    def _pixels_on(self, device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        if device.type == "cpu":
            return self._pixels
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self._pixels.to(device)
        return self._on_device[key]

    def sample_indices(self, num_tasks: int, shots: int, queries: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """classes [B, N] (label j of task b is class classes[b, j]) and image rows [B, N, K + Q]."""
        if num_tasks < 1 or shots < 1 or queries < 0:
            raise ValueError(f"need num_tasks >= 1, shots >= 1, queries >= 0; got {num_tasks}, {shots}, {queries}")
        per_class = shots + queries
        # N distinct classes per task, in random order: the top-N of uniform keys is a random ordered subset
        keys = torch.rand(num_tasks, self.image_set.num_classes, generator=generator)
        classes = keys.topk(self.ways, dim=1).indices  # [B, N]
        counts = self._counts[classes]  # [B, N]
        if int(counts.min()) < per_class:
            self.validate(shots, queries)
        # K + Q distinct images per class: top-(K+Q) of uniform keys over the class's slots (padding gets -1)
        slot_keys = torch.rand(num_tasks, self.ways, self._max_count, generator=generator)
        slot_keys.masked_fill_(torch.arange(self._max_count) >= counts.unsqueeze(-1), -1.0)
        slots = slot_keys.topk(per_class, dim=2).indices  # [B, N, K+Q]
        rows = self._offsets[classes].unsqueeze(-1) + slots
        return classes, rows

    def sample(self, num_tasks: int, shots: int, queries: int, generator: torch.Generator,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TaskBatch:
        """B tasks drawn with `generator` (a CPU generator, so runs reproduce on any device).

        x_support [B, N*K, C, H, W] in [0, 1], y_support [B, N*K] long; likewise the query set with N*Q.
        info: "classes" [B, N] (global class index of each label), "num_classes" (how many classes the set has),
        "support_rows" / "query_rows" (image rows).
        """
        classes, rows = self.sample_indices(num_tasks, shots, queries, generator)
        b, n = classes.shape
        device = torch.device(device)
        pixels = self._pixels_on(device)
        x = pixels[rows.to(device).reshape(-1)].to(dtype).mul_(1 / 255)
        x = x.view(b, n, shots + queries, *self.input_shape)
        labels = torch.arange(n, device=device).view(1, n, 1)
        xs = x[:, :, :shots].reshape(b, n * shots, *self.input_shape)
        xq = x[:, :, shots:].reshape(b, n * queries, *self.input_shape)
        ys = labels.expand(b, n, shots).reshape(b, n * shots)
        yq = labels.expand(b, n, queries).reshape(b, n * queries)
        info = {"classes": classes, "num_classes": self.image_set.num_classes,
                "support_rows": rows[:, :, :shots].reshape(b, -1),
                "query_rows": rows[:, :, shots:].reshape(b, -1)}
        return TaskBatch(xs, ys, xq, yq, info)

    def class_name(self, index: int) -> str:
        return self.image_set.class_names[index]


# ----------------------------------------------------------------------------------------------------------------
# Families from an experiment config, with a train / held-out class split


def _resolve_data(data) -> Path | None:
    if data is None or str(data) == "":
        return None
    return Path(data).expanduser().resolve()


def data_paths(data) -> list[str]:
    """An experiment's `data` as a list of paths: [] for the built-in glyphs, one path, or several."""
    if data is None or (isinstance(data, str) and data == ""):
        return []
    return [str(d) for d in data] if isinstance(data, (list, tuple)) else [str(data)]


def data_label(data) -> str:
    """What people call the set(s): file names joined by " + ", or the built-in glyph set."""
    paths = data_paths(data)
    return " + ".join(Path(p).name for p in paths) if paths else "the built-in glyph set"


def load_images(data, image_size: int = 28, image_mode: str = "grayscale", progress=None, cancel=None,
                invert: bool | None = None, copies: float = 1.0, budget: int | None = None) -> ImageSet:
    """The image set an experiment names: a zip, folder or mini-ImageNet file path, a list of them (trained as one
    set, imagesets.concat_image_sets), or None for the built-in glyph set. A path is read as untrusted, under the
    limits in effect (imagelimits.current_limits), all the paths together within its decoded-set limit (`budget`
    when less is left); `copies`: how many copies of the decoded pixels the caller will hold, for the memory
    check made before decoding."""
    paths = data_paths(data)
    if not paths:
        from .glyphs import GlyphConfig, load_glyphs

        if image_mode != "grayscale":
            raise ValueError(f"the built-in glyph set is grayscale; image mode {image_mode!r} needs --data PATH")
        if not 8 <= int(image_size) <= 256:
            raise ValueError(f"the built-in glyph set needs an image size between 8 and 256, got {image_size}")
        return load_glyphs(GlyphConfig(size=int(image_size)), progress=progress, cancel=cancel)
    from .imagelimits import current_limits
    from .imagesets import concat_image_sets, load_image_set

    resolved = [_resolve_data(p) for p in paths]
    for path in resolved:
        if not path.exists():
            raise ValueError(f"image set not found: {path}")
    twice = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if twice is not None:
        raise ValueError(f"the image set {twice} is given twice")
    prep = Preprocessing(size=(int(image_size), int(image_size)), mode=image_mode, invert=invert)
    left = current_limits().max_set_bytes if budget is None else int(budget)
    sets = []
    for path in resolved:
        sets.append(load_image_set(path, prep, progress=progress, cancel=cancel, copies=copies, budget=left))
        left -= sets[-1].pixels.nbytes
    return concat_image_sets(sets)


# copies of the decoded pixels while the families are built: the set, its train / held-out subsets, and with
# rotations the three rotated blocks of the training classes and their concatenation (~0.7 of the set each)
TRAINING_COPIES = {True: 7.0, False: 2.0}


def check_training_memory(image_size: int, channels: int, ways: int, shots: int, queries: int,
                          meta_batch_size: int, dtype: str = "float32") -> None:
    """Refuse an image size whose training cannot fit in memory, before anything loads. A meta-batch's tasks
    are differentiated together, so conv-4 keeps at least its first block's convolution, batch-norm and ReLU
    outputs for every image of every task (64 filters at half the size, or for images of 64 pixels and more 32
    filters at full size before the max-pool); later blocks, gradients and the inner-loop graph come on top.
    A lower bound, so it refuses only what surely cannot fit: measured, peak RSS grows 2.5 MB a task at 2-way 28x28
    (estimated 0.6) and 27 MB at 2-way 84x84 RGB (estimated 11)."""
    from .imagelimits import check_memory

    size = int(image_size)
    large = size >= 64
    side = size if large else (size + 1) // 2
    filters = 32 if large else 64
    itemsize = 8 if "64" in str(dtype) else 4
    images = int(meta_batch_size) * int(ways) * (int(shots) + int(queries))
    needed = images * (filters * side * side * 3 + channels * size * size) * itemsize
    check_memory(needed, f"image size {size}: training conv-4 on {meta_batch_size} tasks of "
                         f"{images // meta_batch_size} {size}x{size} images each")


def split_rule(num_classes: int, ways: int) -> tuple[int, str]:
    """How many classes meta-train (the rest are held out) and the rule, in words."""
    if num_classes >= PAPER_MIN_CLASSES:
        return PAPER_TRAIN_CLASSES, (f"the MAML paper's sizes: {PAPER_TRAIN_CLASSES} classes train, the rest held "
                                     f"out (sets of {PAPER_MIN_CLASSES}+ classes, the lab's permutation; --split "
                                     f"paper makes cbfinn/maml's own)")
    heldout = max(int(ways), int(round(HELDOUT_FRACTION * num_classes)))
    if num_classes - heldout < ways:
        raise ValueError(f"{ways}-way tasks need {ways} training and {ways} held-out classes, but the set has "
                         f"only {num_classes} classes")
    return num_classes - heldout, f"{round(100 * HELDOUT_FRACTION)}% of the classes held out (at least {ways})"


def split_train_heldout(image_set: ImageSet, ways: int, seed: int = SPLIT_SEED) -> tuple[ImageSet, ImageSet, dict]:
    """Disjoint train / held-out classes (whole classes, any alphabet), deterministic for a seed."""
    n_train, rule = split_rule(image_set.num_classes, ways)
    perm = np.random.default_rng(seed).permutation(image_set.num_classes)
    train = image_set.subset(np.sort(perm[:n_train]), name=f"{image_set.name}:train")
    heldout = image_set.subset(np.sort(perm[n_train:]), name=f"{image_set.name}:heldout")
    info = {"seed": int(seed), "rule": rule, "by": "class", "train_classes": train.num_classes,
            "heldout_classes": heldout.num_classes}
    return train, heldout, info


def cbfinn_split(image_set: ImageSet, ways: int) -> tuple[ImageSet, ImageSet, ImageSet, dict]:
    """The MAML paper's Omniglot split, as cbfinn/maml's data_generator.py makes it: every character pooled (both
    zips), in sorted alphabet/character order (cbfinn lists folders in the file system's order, which differs
    between machines), shuffled by random.Random(1); 1,100 meta-train, 100 validate, the rest are the test classes.
    Returns (train, validation, test, info)."""
    import random

    n = image_set.num_classes
    if n < CBFINN_TRAIN + CBFINN_VAL + ways:
        raise ValueError(f"the paper split needs the full Omniglot (1,623 characters: --data images_background.zip "
                         f"--data images_evaluation.zip); {image_set.name} has {n} classes")
    keys = ["/".join(name.split("/")[-2:]) for name in image_set.class_names]  # alphabet/character, zip dropped
    order = sorted(range(n), key=lambda i: (keys[i], i))
    random.Random(CBFINN_SEED).shuffle(order)
    train = image_set.subset(order[:CBFINN_TRAIN], name=f"{image_set.name}:train")
    val = image_set.subset(order[CBFINN_TRAIN:CBFINN_TRAIN + CBFINN_VAL], name=f"{image_set.name}:validation")
    test = image_set.subset(order[CBFINN_TRAIN + CBFINN_VAL:], name=f"{image_set.name}:test")
    info = {"name": "paper", "seed": CBFINN_SEED, "by": "class",
            "rule": f"MAML paper (cbfinn/maml): {CBFINN_TRAIN} characters meta-train, {CBFINN_VAL} validate, the "
                    f"other {test.num_classes} are held out for eval",
            "train_classes": train.num_classes, "validation_classes": val.num_classes,
            "heldout_classes": test.num_classes}
    if n != 1623:
        info["note"] = f"the full Omniglot has 1,623 characters; this set has {n}"
    return train, val, test, info


def _source_info(image_set: ImageSet, data, eval_data=None) -> dict:
    paths = [str(_resolve_data(p)) for p in data_paths(data)]
    prep = image_set.preprocessing
    info = {"data": (paths if len(paths) > 1 else paths[0]) if paths else None,
            "source": "glyphs" if not paths else "path",
            "preprocessing_request": {"size": list(prep.size), "mode": prep.mode, "invert": "auto",
                                      "normalization": prep.normalization}}
    if eval_data:
        info["eval_data"] = str(_resolve_data(eval_data))
    if not paths and "glyph_config" in image_set.meta:
        info["glyph_config"] = dict(image_set.meta["glyph_config"])
    return info


def families_from_image_set(image_set: ImageSet, ways: int, rotations: bool = True, data=None,
                            seed: int = SPLIT_SEED, split: str = "lab", eval_set: ImageSet | None = None,
                            eval_data=None) -> tuple[ImageTaskFamily, ImageTaskFamily]:
    """(train family, held-out family) over a loaded set. The held-out family is `eval_set` whole when given (every
    class of `image_set` then meta-trains), else the split's held-out classes ("lab": the lab's rule, "paper":
    cbfinn's). The train family's validation_family is the held-out family, or the paper split's 100 validation
    characters."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    val_set = None
    if eval_set is not None:
        if split == "paper":
            raise ValueError("the paper split makes its own held-out classes; --eval-data is for the lab split")
        if eval_set.image_shape != image_set.image_shape:
            raise ValueError(f"the held-out set loads as {list(eval_set.image_shape)} images, the training set as "
                             f"{list(image_set.image_shape)}")
        train_set, heldout_set = image_set, eval_set
        info = {"name": "held-out set", "seed": int(seed), "by": "set",
                "rule": "a separate held-out set: every training class meta-trains, the held-out set's classes "
                        "validate and evaluate",
                "train_classes": image_set.num_classes, "heldout_classes": eval_set.num_classes}
    elif split == "paper":
        train_set, val_set, heldout_set, info = cbfinn_split(image_set, ways)
    else:
        train_set, heldout_set, info = split_train_heldout(image_set, ways, seed)
        info = {"name": "lab", **info}
    source = _source_info(image_set, data, eval_data)
    angles = list(ROTATIONS) if rotations else []
    if angles:
        train_set = train_set.with_rotations(angles)
    train = ImageTaskFamily(train_set, ways, info={**source, "split": {**info, "part": "train"},
                                                   "rotations": angles})
    heldout = ImageTaskFamily(heldout_set, ways, info={**source, "split": {**info, "part": "heldout"},
                                                       "rotations": []})
    train.validation_family = heldout
    if val_set is not None:
        train.validation_family = ImageTaskFamily(val_set, ways, info={**source, "split": {**info,
                                                  "part": "validation"}, "rotations": []})
    return train, heldout


def _check_shapes(family: ImageTaskFamily, part: str, shots: int, queries: int) -> None:
    try:
        family.validate(shots, queries)
    except ValueError as exc:
        raise ValueError(f"{part} classes: {exc}") from None


def image_family_from_config(config, progress=None, cancel=None, split: str = "train") -> ImageTaskFamily:
    """The task family of an image experiment: `split` "train" (rotation-augmented meta-training classes, with
    the held-out family as `validation_family`) or "heldout" (the classes training never sees).

    Refuses, with the numbers, ways / shots / queries the set cannot supply in either part.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    mode = getattr(config, "image_mode", "grayscale")
    check_training_memory(config.image_size, 1 if mode == "grayscale" else 3, config.ways, config.shots,
                          config.queries, config.meta_batch_size, config.dtype)
    image_set = load_images(config.data, config.image_size, mode, progress, cancel,
                            copies=TRAINING_COPIES[bool(config.rotations)])
    eval_data = getattr(config, "eval_data", None)
    eval_set = None
    if eval_data and _resolve_data(eval_data) in [_resolve_data(p) for p in data_paths(config.data)]:
        raise ValueError(f"the held-out set {eval_data} is also a training set (--data): its classes would not be "
                         f"held out")
    if eval_data:
        from .imagelimits import current_limits

        eval_set = load_images(eval_data, config.image_size, mode, progress, cancel,
                               budget=current_limits().max_set_bytes - image_set.pixels.nbytes)
    train, heldout = families_from_image_set(image_set, config.ways, config.rotations, config.data,
                                             split=config.task_option("split"), eval_set=eval_set,
                                             eval_data=eval_data)
    train.convention = heldout.convention = config.task_option("convention")
    if train.validation_family is not heldout:
        train.validation_family.convention = train.convention
        _check_shapes(train.validation_family, "validation", config.shots, config.queries)
    _check_shapes(train, "training", config.shots, config.queries)
    _check_shapes(heldout, "held-out", config.shots, config.queries)
    return train if split == "train" else heldout


def _metadata_settings(task: dict) -> tuple[int, list, str, dict, str]:
    """What an export's task metadata says about how its image set was read and split: (ways, image size, image
    mode, the split's record, the split's name); refuses metadata of another family."""
    if task.get("name") != "images":
        raise ValueError(f"not an image-task initialization (task {task.get('name')!r})")
    request = task.get("preprocessing_request") or {}
    recorded = task.get("preprocessing") or {}
    size = request.get("size") or recorded.get("size") or [28, 28]
    mode = request.get("mode") or recorded.get("mode") or "grayscale"
    split_info = task.get("split") or {}
    split = split_info.get("name") or ("held-out set" if task.get("eval_data") else "lab")
    return int(task.get("ways", 5)), size, mode, split_info, split


def _load_recorded_set(task: dict, data, size, mode, progress, cancel):
    """The image set at `data`, or, where there is none, the built-in glyphs with the recorded glyph settings."""
    if data_paths(data):
        return load_images(data, int(size[0]), mode, progress, cancel)
    glyph = task.get("glyph_config") or {}
    from .glyphs import GlyphConfig, load_glyphs

    known = {k: v for k, v in glyph.items() if k in GlyphConfig.__dataclass_fields__}
    return load_glyphs(GlyphConfig(**known) if known else GlyphConfig(size=int(size[0])), progress=progress,
                       cancel=cancel)


def heldout_family_from_metadata(task: dict, data=None, progress=None, cancel=None,
                                 hint: str = "pass --data PATH") -> ImageTaskFamily:
    """Rebuild the held-out classes an initialization was *not* trained on, from its export metadata
    (`task` is the training family's describe()): the separate held-out set it recorded (`eval_data`), or the
    held-out part of its split of the set(s) it was trained on. `data` (a path or a list) overrides the recorded
    path(s): the held-out set itself when training had one, else the set(s) to split. `hint` ends the message
    when the image set cannot be found (what the user can do about it, in their interface)."""
    ways, size, mode, split_info, split = _metadata_settings(task)
    held_out_set = split == "held-out set"
    if data is None or data_paths(data) == []:
        data = task.get("eval_data") if held_out_set else task.get("data")
        missing = [p for p in data_paths(data) if not Path(p).exists()]
        if missing:
            raise ValueError(f"the image set this initialization was {'evaluated' if held_out_set else 'trained'} "
                             f"on is not at {missing[0]}; {hint}")
    else:
        for p in data_paths(data):
            if not Path(p).expanduser().exists():
                raise ValueError(f"image set not found: {p}")
    if not data_paths(data) and (task.get("source") != "glyphs" or held_out_set):
        raise ValueError(f"the metadata does not say which image set was used; {hint}")
    image_set = _load_recorded_set(task, data, size, mode, progress, cancel)
    seed = int(split_info.get("seed", SPLIT_SEED))
    if held_out_set:
        info = {**_source_info(image_set, task.get("data")), "eval_data": str(data_paths(data)[0]) if len(
            data_paths(data)) == 1 else data_paths(data), "split": {**split_info, "part": "heldout"}, "rotations": []}
        heldout = ImageTaskFamily(image_set, ways, info=info)
    else:
        _, heldout = families_from_image_set(image_set, ways, rotations=False, data=data, seed=seed, split=split)
    heldout.convention = str(task.get("convention", "lab"))  # exports from before conventions: the lab's
    shape = task.get("input_shape")
    if shape is not None and list(heldout.input_shape) != list(shape):
        raise ValueError(f"images of {data_label(data) if data_paths(data) else 'the glyph set'} load as "
                         f"{list(heldout.input_shape)}, but the model was trained on {list(shape)}")
    polarity = (task.get("preprocessing") or {}).get("invert")
    if isinstance(polarity, bool) and polarity != heldout.image_set.preprocessing.invert:
        heldout.info["note"] = (f"stroke polarity differs from training (inverted in training: {polarity}, now: "
                                f"{heldout.image_set.preprocessing.invert}); accuracy may suffer")
    return heldout


def training_family_from_metadata(task: dict, progress=None, cancel=None,
                                  hint: str = "pass --data PATH") -> ImageTaskFamily:
    """Rebuild the classes an initialization meta-trained on (with the rotations it recorded), from its export
    metadata: what the "running" batch-norm mode pools its population statistics over (no held-out image)."""
    ways, size, mode, split_info, split = _metadata_settings(task)
    data = task.get("data")
    missing = [p for p in data_paths(data) if not Path(p).exists()]
    if missing:
        raise ValueError(f"the image set this initialization was trained on is not at {missing[0]}; {hint}")
    if not data_paths(data) and task.get("source") != "glyphs":
        raise ValueError(f"the metadata does not say which image set was used; {hint}")
    image_set = _load_recorded_set(task, data, size, mode, progress, cancel)
    rotations = bool(task.get("rotations"))
    if split == "held-out set":
        train = ImageTaskFamily(image_set.with_rotations(list(ROTATIONS)) if rotations else image_set, ways,
                                info={"split": {**split_info, "part": "train"}})
    else:
        train, _ = families_from_image_set(image_set, ways, rotations=rotations, data=data,
                                           seed=int(split_info.get("seed", SPLIT_SEED)), split=split)
    train.convention = str(task.get("convention", "lab"))
    return train


class ImageTasks(TaskFamilyKind):
    """The registry entry of N-way K-shot image classification: conv-4 trained with cross-entropy."""

    name = "images"
    label = "Images (few-shot classification)"
    short_label = "Images"
    description = "N-way K-shot classification on Omniglot, a class-per-folder set or the built-in glyphs"
    loss = "cross_entropy"
    loss_label = "cross-entropy"
    metric = "accuracy"
    # the MAML paper's Omniglot 5-way setting: meta-batch 32, 1-shot, 5 queries per class while training, 60,000
    # iterations; every algorithm: alpha 0.4, one inner step in training, three at test, Adam 1e-3
    # 800 iterations: the run the tuned defaults reach 95% held-out 5-way 1-shot on small1 within (MAML's cosine
    # outer lr spans it); the paper ran 60,000 (`--preset paper`)
    experiment_defaults = {"meta_batch_size": 32, "shots": 1, "queries": 5, "iterations": 800}
    algorithm_defaults = {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, "meta_lr": 1e-3}
    presets = {"paper": {
        "description": "the MAML paper's Omniglot 5-way settings: meta-batch 32, 60,000 iterations, Adam 1e-3 "
                       "constant, alpha 0.4, 1 inner step (3 at test)",
        "experiment": {"meta_batch_size": 32, "iterations": 60000},
        "algorithm": {"meta_lr": 1e-3, "meta_lr_schedule": "constant", "inner_lr": 0.4, "inner_steps": 1,
                      "test_inner_steps": 3}}}
    playground = NoPlayground("Image tasks have no curve to click points onto: the Tasks view draws N classes, "
                              "lets you add your own drawings, and shows each initialization adapting to them.",
                              "images")
    parallel_ops = True  # conv-4 over 25-160 images a call: 1.3-1.5x faster in the app on 2 threads (lab/threads.py)
    cheap_to_build = False  # an image set loads (and may be decoded) first
    # convention: "lab" (per-task mean cross-entropy; batch norm with scale, eps 1e-5, all adapted; flattened
    # head) or "cbfinn" (cbfinn/maml: cross-entropy sum / K, batch norm without scale, eps 1e-3, beta not
    # adapted in the inner loop, Omniglot head on the mean of the final map); TOML [task_options], CLI
    # --convention or --task-option convention=...
    # split: "lab" (the classes split by the lab's rule) or "paper" (cbfinn/maml's Omniglot split: the full Omniglot
    # given as both zips); CLI --split, TOML [task_options] split = "paper"
    option_defaults = {"convention": "lab", "split": "lab"}
    model_kind = "conv4"

    @classmethod
    def tasks_text(cls, config) -> str:
        return f"{config.ways}-way {config.shots}-shot images"

    @classmethod
    def loading_label(cls, config) -> str | None:
        extra = f" and {data_label(config.eval_data)}" if getattr(config, "eval_data", None) else ""
        return f"loading {data_label(config.data)}{extra}"

    @classmethod
    def build_report(cls, config, family) -> str | None:
        what = data_label(config.data)
        split = family.info.get("split", {})
        rot = family.info.get("rotations") or []
        held = (f"{split.get('heldout_classes')} of {data_label(config.eval_data)} held out for validation and eval"
                if getattr(config, "eval_data", None) else
                f"{split.get('validation_classes')} for validation, {split.get('heldout_classes')} held out for eval "
                f"(the MAML paper's split)" if split.get("name") == "paper" else
                f"{split.get('heldout_classes')} held out for validation and eval")
        text = (f"{what}: {split.get('train_classes')} training classes"
                f"{f' (x{len(rot) + 1} with rotations: {family.image_set.num_classes})' if rot else ''}, "
                f"{held}; images {'x'.join(str(s) for s in family.input_shape)}")
        return "\n".join([text, *skipped_report(family.image_set.report)])

    @classmethod
    def validate(cls, config) -> None:
        if config.ways < 2:
            raise ValueError(f"ways must be >= 2 for classification, got {config.ways}")
        from ..models.conv4 import CONVENTIONS

        if config.task_option("convention") not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got "
                             f"{config.task_option('convention')!r}")
        if config.task_option("split") not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {config.task_option('split')!r}")
        if config.task_option("split") == "paper" and getattr(config, "eval_data", None):
            raise ValueError("the paper split makes its own held-out classes; --eval-data is for the lab split")
        from ..models.conv4 import Conv4
        from ..validation import check_training_memory, shapes_numel

        channels = 3 if config.image_mode == "rgb" else 1
        model = Conv4(in_channels=channels, image_size=config.image_size, ways=config.ways,
                      convention=config.task_option("convention"))
        per_pixel = IMAGE_ACTIVATIONS * model.filters / 64  # 84x84 inputs: 32 filters
        per_task = config.ways * (config.shots + config.queries) * per_pixel * config.image_size ** 2
        params = shapes_numel(model.param_shapes())
        check_training_memory(config, params, per_task, per_task,
                              f"image size {config.image_size}: {config.meta_batch_size} tasks of {config.ways} ways "
                              f"x {config.shots + config.queries} images of {config.image_size}x{config.image_size}")

    @classmethod
    def build(cls, config, progress=None, cancel=None):
        return image_family_from_config(config, progress=progress, cancel=cancel)

    @classmethod
    def model(cls, config, family):
        from ..models.conv4 import Conv4

        return Conv4.for_family(family)

    @classmethod
    def from_description(cls, description: dict, data=None, progress=None, cancel=None, hint: str = "pass --data PATH"):
        return heldout_family_from_metadata(description, data, progress, cancel, hint)


# ----------------------------------------------------------------------------------------------------------------
# Held-out accuracy


def accuracy_after_steps(model, family: ImageTaskFamily, params, shots: int, steps: list[int], adaptation,
                         num_tasks: int = 600, queries: int = 15, seed: int = 2017, device="cpu",
                         dtype=torch.float32, chunk: int = 50, cancel: Callable[[], bool] | None = None,
                         batch_norm=None) -> dict[int, tuple[float, float]]:
    """Query accuracy of `num_tasks` seeded tasks after each of `steps` test-time steps: {steps: (mean, 95% CI)}.
    `adaptation`: the algorithm's AlgorithmConfig (fine-tunes as it trained) or an SGD step size; `batch_norm`: the
    predictions' batch-norm mode (models/batch_norm.py; None: the algorithm's own)."""
    return accuracy_by_batch_norm(model, family, params, shots, steps, adaptation, [batch_norm], num_tasks, queries,
                                  seed, device, dtype, chunk, cancel)[0]


def accuracy_by_batch_norm(model, family: ImageTaskFamily, params, shots: int, steps: list[int], adaptation,
                           batch_norms: list, num_tasks: int = 600, queries: int = 15, seed: int = 2017, device="cpu",
                           dtype=torch.float32, chunk: int = 50, cancel: Callable[[], bool] | None = None
                           ) -> list[dict[int, tuple[float, float]]]:
    """accuracy_after_steps under each of several batch-norm modes, the tasks adapted once (adaptation does not
    depend on the mode): one {steps: (mean, 95% CI)} per entry of `batch_norms`."""
    from ..algorithms.config import predict, test_trajectory
    from ..analysis.evaluation import mean_ci95
    from ..models.batch_norm import at_step
    from .losses import accuracy_per_task, loss_function, model_loss

    if num_tasks < 1:
        raise ValueError(f"need at least one evaluation task, got {num_tasks}")
    family.validate(shots, queries)
    wanted = sorted({int(s) for s in steps})
    generator = torch.Generator().manual_seed(seed)
    theta = {k: v.detach().to(device, dtype) for k, v in params.items()}
    accs: list[dict[int, list[np.ndarray]]] = [{s: [] for s in wanted} for _ in batch_norms]
    done = 0
    while done < num_tasks:
        if cancel is not None and cancel():
            break
        n = min(chunk, num_tasks - done)
        batch = family.sample(n, shots, queries, generator, device=device, dtype=dtype)
        trajectory = test_trajectory(adaptation, model, loss_function(model_loss(family.loss, model)), theta,
                                     batch.x_support, batch.y_support, wanted[-1])
        for step, fast in enumerate(trajectory):
            if step not in wanted:
                continue
            for mode, acc in zip(batch_norms, accs):
                with torch.no_grad():
                    logits = predict(adaptation, model, fast, batch.x_support, batch.y_support, batch.x_query,
                                     batch_norm=at_step(mode, step))
                    acc[step].append(accuracy_per_task(logits, batch.y_query).double().cpu().numpy())
        done += n
    out = []
    for acc in accs:
        result = {}
        for s in wanted:
            mean, ci = mean_ci95(np.concatenate(acc[s]))
            result[s] = (float(mean), float(ci))
        out.append(result)
    return out


def format_accuracy(ways: int, shots: int, mean: float, ci: float) -> str:
    """`5-way 1-shot: 96.1% +- 0.4%`"""
    return f"{ways}-way {shots}-shot: {100 * mean:.1f}% +- {100 * ci:.1f}%"


def skipped_report(report, limit: int = 20) -> list[str]:
    """The lines a command prints about what a load left out: every skipped file (the first `limit`) and why,
    under the limits the files were checked against."""
    if report is None or not report.skipped:
        return []
    limits = report.limits_text()
    head = f"skipped {len(report.skipped):,} file{'s' if len(report.skipped) != 1 else ''}" + (
        f" (limits: {limits})" if limits else "") + ":"
    return [head, *(f"  {line}" for line in report.skipped_lines(limit))]


class _LoadProgress:
    """Loading progress on stderr: rewritten in place on a terminal, a few lines otherwise."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int):
        pct = int(100 * done / total) if total else 100
        step = 1 if self.tty else 25
        if pct // step != self.shown // step or (done == total and self.shown != 100):
            if self.tty:
                self.stream.write(f"\r{self.label}: {pct}% ({done}/{total})" + ("\n" if done >= total else ""))
            elif pct < 100 or self.shown >= 0:  # a cache hit reports 100% at once: say nothing
                self.stream.write(f"{self.label}: {pct}% ({done}/{total})\n")
            self.stream.flush()
            self.shown = pct
        return True


def eval_image_initialization(args, params, meta, model, shots_list, steps, adaptation, device,
                              dtype=torch.float32) -> None:
    """`maml-lab eval` for a conv-4 initialization: held-out classes of the training split, accuracy with 95% CI.

    Prints one line per shots value, e.g. `5-way 1-shot: 96.1% +- 0.4%`, under a header naming the steps.
    """
    task = meta.get("task", {}) or {}
    data = getattr(args, "data", None)
    ways = int(task.get("ways", getattr(model, "ways", 5)))
    if getattr(args, "ways", None) is not None and int(args.ways) != ways:
        raise ValueError(f"this initialization has a {ways}-way output layer; --ways {args.ways} does not fit it")
    if getattr(model, "ways", ways) != ways:
        raise ValueError(f"the metadata says {ways} ways but the model has {model.ways} outputs")
    hyper = meta.get("hyperparameters", {}) or {}
    if not steps:
        steps = [int(hyper.get("test_inner_steps", 3))]
    split_name = (task.get("split") or {}).get("name") or ("held-out set" if task.get("eval_data") else "lab")
    shown = data or (task.get("eval_data") if split_name == "held-out set" else task.get("data"))
    label = f"loading {data_label(shown) if data_paths(shown) else 'glyphs'}"
    family = heldout_family_from_metadata(task, data=data, progress=_LoadProgress(label))
    for line in skipped_report(family.image_set.report):
        print(line, file=sys.stderr)
    min_count = int(family.image_set.counts.min())
    queries = getattr(args, "queries", None)
    if queries is None:
        queries = min(15, min_count - max(shots_list))
        if queries < 1:
            raise ValueError(f"{max(shots_list)} shots leave no query images: held-out classes have only "
                             f"{min_count} images")
    for shots in shots_list:
        family.validate(shots, queries)
    split = task.get("split", {}) or {}
    where = " + ".join(data_paths(shown)) or None
    how = ("a separate held-out set" if split_name == "held-out set" else
           "the MAML paper's split" if split_name == "paper" else f"split seed {split.get('seed', SPLIT_SEED)}")
    print(f"held-out: {family.image_set.num_classes} classes of {where or 'the built-in glyph set'} never seen in "
          f"training ({how}), {args.tasks} tasks, {queries} queries per class")
    if family.info.get("note"):
        print(f"note: {family.info['note']}")
    from ..algorithms.config import adaptation_text
    from ..analysis.card import EvaluationCard

    card = EvaluationCard.build("images", args.tasks, shots_list, steps, adaptation, queries=queries, ways=ways,
                                loss=family.loss, model=model, algorithm=meta.get("algorithm"),
                                notes={"data": where or "glyphs", "heldout_classes": family.image_set.num_classes,
                                       "split_seed": split.get("seed", SPLIT_SEED), "task_seed": args.seed})
    modes = list(getattr(args, "bn", None) or [None])
    running_note = {"running_statistics": "pooled over 100 seeded tasks of the training classes, adapted by the "
                                          "algorithm's rule, per shots and step count"} if "running" in modes else {}
    cards = [card if mode is None else EvaluationCard.build(
        "images", args.tasks, shots_list, steps, adaptation, queries=queries, ways=ways, loss=family.loss, model=model,
        algorithm=meta.get("algorithm"), batch_norm=mode, notes={**card.notes, **(running_note if mode == "running"
                                                                                 else {})}) for mode in modes]
    probe = None
    if getattr(args, "probe", False):
        from ..algorithms.baseline import linear_probe

        probe = linear_probe()
        for c in cards:
            c.probe = f"{adaptation_text(probe)}, {probe.test_inner_steps} epochs"
    for c in cards:
        print(c.text())
    results = {}
    for shots in shots_list:
        batch_norms = [running_statistics(task, model, params, adaptation, steps, shots, queries, device, dtype)
                       if mode == "running" else mode for mode in modes]
        results[shots] = accuracy_by_batch_norm(model, family, params, shots, steps, adaptation, batch_norms,
                                                args.tasks, queries, args.seed, device, dtype)
    rows = []
    for s in sorted(set(steps)):
        print(f"after {s} fine-tuning step{'s' if s != 1 else ''} ({adaptation_text(adaptation)}):")
        for i, c in enumerate(cards):
            for shots in shots_list:
                mean, ci = results[shots][i][s]
                print(format_accuracy(ways, shots, mean, ci) + (f"  (batch norm {c.batch_norm_mode})"
                                                                if len(cards) > 1 else ""))
                rows.append({"ways": ways, "shots": shots, "steps": s, "metric": "accuracy", "mean": mean, "ci95": ci,
                             "batch_norm": c.batch_norm_mode})
    if probe is not None:
        rows += probe_rows(task, model, family, params, shots_list, probe, modes, cards, args.tasks, queries,
                           args.seed, device, dtype)
    out = {"card": cards[0].to_dict(), "results": rows}
    if len(cards) > 1:
        out["cards"] = {c.batch_norm_mode: c.to_dict() for c in cards}
    return out


def probe_rows(task: dict, model, family, params, shots_list, probe, modes, cards, tasks: int, queries: int,
               seed: int, device, dtype) -> list[dict]:
    """`eval --probe`: the linear probe's accuracy on the evaluation's tasks (the same seed) in each batch-norm mode,
    printed under the evaluation's rows; its result rows (`"rule": "linear probe"`)."""
    epochs = probe.test_inner_steps
    results = {}
    for shots in shots_list:
        batch_norms = [running_statistics(task, model, params, probe, [epochs], shots, queries, device, dtype)
                       if mode == "running" else mode for mode in modes]
        results[shots] = accuracy_by_batch_norm(model, family, params, shots, [epochs], probe, batch_norms, tasks,
                                                queries, seed, device, dtype)
    print(f"linear probe, the body frozen and a new linear head fit on each support set ({epochs} epochs):")
    rows = []
    for i, c in enumerate(cards):
        for shots in shots_list:
            mean, ci = results[shots][i][epochs]
            print(format_accuracy(family.ways, shots, mean, ci) + (f"  (batch norm {c.batch_norm_mode})"
                                                                   if len(cards) > 1 else ""))
            rows.append({"ways": family.ways, "shots": shots, "steps": epochs, "metric": "accuracy", "mean": mean,
                         "ci95": ci, "batch_norm": c.batch_norm_mode, "rule": "linear probe"})
    return rows


def running_statistics(task: dict, model, params, adaptation, steps, shots: int, queries: int, device, dtype,
                       num_tasks: int = 100):
    """The "running" batch-norm mode's population statistics for `eval`: `num_tasks` tasks of the training classes
    (rebuilt from the metadata), seeded, adapted by the algorithm's rule, per step count (analysis/evaluation.py)."""
    from ..analysis.evaluation import population_statistics

    train = training_family_from_metadata(task, progress=_LoadProgress("loading the training set (running "
                                                                       "statistics)"))
    return population_statistics(model, train, params, adaptation, steps, num_tasks, shots, queries, seed=0,
                                 device=device, dtype=dtype)

