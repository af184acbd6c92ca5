"""Baseline++ (Chen et al. 2019): Baseline with cosine-similarity heads, in training and at test time.

The reference's `backbone.distLinear` (wyharveychen/CloserLookFewShot): a bias-free linear layer under WeightNorm
(dim 0: each class's weight is g * v / |v|, its length g learned) applied to the feature vector over its norm plus
1e-5, times a fixed scale, 2 for heads of up to 200 classes and 10 above (its Omniglot head has more than 1,000).
The all-class head is exported as the reference names it ("classifier.L.weight_g" [C, 1], "classifier.L.weight_v"
[C, F]); the test-time head is a fresh distLinear fit as Baseline's linear one is (head_fit.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from . import head_fit
from .baseline import CLASSIFIER_SEED, Baseline


class BaselinePlusPlus(Baseline):
    """Chen et al. 2019's Baseline++: Baseline whose heads score the cosine between a feature and each class."""

    name = "baselinepp"
    label = "Baseline++"
    color = "#AA4499"
    description = ("Baseline++ (Chen et al. 2019): Baseline with cosine-similarity heads (weight-normalized, scaled), "
                   "in training over all classes and fit per task at test")
    head = "cosine"

    def classifier_shapes(self, classes: int, dim: int) -> "OrderedDict[str, tuple[int, ...]]":
        return OrderedDict([("classifier.L.weight_g", (classes, 1)), ("classifier.L.weight_v", (classes, dim))])

    def _init_classifier(self, classes: int, dim: int) -> None:
        """distLinear's: nn.Linear's initial weight as v, and g = |v| (WeightNorm's start: the weight unchanged)."""
        self._new_classifier(self.classifier_shapes(classes, dim))
        generator = torch.Generator().manual_seed(CLASSIFIER_SEED)
        v = (torch.rand(classes, dim, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(dim)
        with torch.no_grad():
            self.classifier["classifier.L.weight_v"].copy_(v)
            self.classifier["classifier.L.weight_g"].copy_(v.norm(dim=1, keepdim=True))

    def classifier_logits(self, feats: torch.Tensor) -> torch.Tensor:
        weight = head_fit.weight_normed(self.classifier["classifier.L.weight_g"],
                                        self.classifier["classifier.L.weight_v"])
        return head_fit.head_logits("cosine", weight, None, feats)
