"""One place that seeds every random number generator a training run draws from."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """timm's crops draw from `random`, mixup from numpy, torchvision's jitter from torch: seed all three."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
