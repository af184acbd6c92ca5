"""N-way K-shot classification tasks drawn from an ImageSet, with the same interface as SinusoidFamily.

A task picks `ways` distinct classes, gives them labels 0..N-1 in a random order (so a label means nothing
across tasks), and draws shots + queries distinct images of each class. Support and query sets are laid out
class by class: y_support = [0]*K + [1]*K + ... All tasks of a batch are sampled at once with tensor ops.
"""

from __future__ import annotations

import torch

from .imagesets import ImageSet, validate_task_shape
from .tasks import TaskBatch


class ImageTaskFamily:
    """Few-shot classification tasks over `image_set`; `sample` returns x [B, N*K, C, H, W], y [B, N*K] long."""

    name = "images"
    loss = "cross_entropy"

    def __init__(self, image_set: ImageSet, ways: int = 5):
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

    def describe(self) -> dict:
        return {"name": self.name, "ways": self.ways, "input_shape": list(self.input_shape),
                "image_set": self.image_set.describe(), "preprocessing": self.image_set.preprocessing.to_dict()}

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
        info: "classes" [B, N] (global class index of each label), "support_rows" / "query_rows" (image rows).
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
        info = {"classes": classes, "support_rows": rows[:, :, :shots].reshape(b, -1),
                "query_rows": rows[:, :, shots:].reshape(b, -1)}
        return TaskBatch(xs, ys, xq, yq, info)

    def class_name(self, index: int) -> str:
        return self.image_set.class_names[index]
