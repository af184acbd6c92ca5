"""The metrics a meta-training run reports, named once: the Trainer, run folders, the app and exports read these."""

from __future__ import annotations

TRAIN_FIELDS = ("pre_loss", "post_loss", "pre_accuracy", "post_accuracy")  # per iteration, per algorithm
VAL_FIELDS = ("val_pre_loss", "val_post_loss", "val_pre_accuracy", "val_post_accuracy")  # every val_every
METRIC_FIELDS = (*TRAIN_FIELDS, *VAL_FIELDS)
