"""Training-only image augmentation on top of the shared Pillow pieces of ``d2v.models.preprocessing.image``.

``color_jitter`` is torchvision's ``ColorJitter(brightness=s, contrast=s, saturation=s)`` on a PIL image,
reproduced with the same Pillow operations torchvision's PIL backend calls (``ImageEnhance.Brightness``,
``Contrast``, ``Color``), in a random order, each with a factor drawn uniformly from ``[max(0, 1 - s), 1 + s]``.
data2vec_vision applies ``ColorJitter(0.4, 0.4, 0.4)`` to the whole image before the flip and the random
resized crop (``beit/datasets.py::DataAugmentationForBEiT``). The draws come from the caller's numpy
generator (keyed per sample), so no torch and no global RNG. torchvision is not a dependency here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

# torchvision's order of the adjustments (fn_idx 0, 1, 2; hue, index 3, is 0 in data2vec_vision's jitter).
_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def jitter_params(strength: float, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """``(order, factors)``: a random order of brightness / contrast / saturation and their factors."""
    order = rng.permutation(len(_ENHANCERS)).tolist()
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=len(_ENHANCERS)).tolist()
    return order, factors


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Random brightness, contrast and saturation, each by a factor in ``[1 - strength, 1 + strength]``.

    Args:
        img: an RGB PIL image.
        strength: torchvision's ``brightness = contrast = saturation`` argument (data2vec_vision 0.4); 0 = no-op.
        rng: the sample's generator.

    Returns:
        The jittered image (the input itself when ``strength`` is 0).
    """
    if strength <= 0:
        return img
    order, factors = jitter_params(strength, rng)
    for i in order:
        img = _ENHANCERS[i](img).enhance(factors[i])
    return img
