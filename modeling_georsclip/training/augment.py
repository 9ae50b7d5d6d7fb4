"""GeoRSCLIP training augmentation, then the processor's normalisation.

RS5M fine-tuning (GeoRSCLIP paper, "RET-2"/"RS5M" recipes): RandomResizedCrop to the model size with scale
(0.9, 1.0) and bicubic interpolation, horizontal flip, rotation by a uniform angle in [0, 360). Remote-sensing
scenes have no canonical "up", hence the full rotation. Evaluation uses the processor itself (resize + centre crop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from ..processing import crop_height


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised (3, S, S) float tensor; draws randomness from ``torch``'s global RNG."""
    if augment:
        geometry = [
            v2.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation((0, 360), interpolation=v2.InterpolationMode.BILINEAR),
        ]
    else:
        geometry = [
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(image_size),
        ]
    # Geometry runs on the PIL image (Pillow's resampling is several times faster than resizing a uint8 tensor
    # of a large scene); only the small result becomes a tensor.
    return v2.Compose(
        [*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )


def transform_for_processor(processor, augment: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """``train_transform`` with the crop size and mean/std of ``processor.image_processor``."""
    ip = processor.image_processor
    return train_transform(crop_height(ip), ip.image_mean, ip.image_std, augment=augment)
