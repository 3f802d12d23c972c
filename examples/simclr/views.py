"""Two augmented views per image, with Keras preprocessing layers.

SimCLR's augmentations are a random resized crop with a flip, colour
distortion and Gaussian blur; its ablation found the crop with colour
distortion the pair that matters. Fashion-MNIST is grayscale, so the colour
part reduces to what is left of it, brightness and contrast jitter, and
Gaussian noise stands in for blur's role of hiding low-level texture. Keras
has no RandomResizedCrop: a random zoom in (crop 60-100% of each side, each
side drawn apart, so the aspect ratio varies) and a random translation
place the crop.
"""

import keras
from keras import layers


def augmenter(seed=None, crop=0.4, jitter=0.4, noise=0.1):
    """A `keras.Sequential` mapping images of shape (batch, height, width, 1),
    float32 in [0, 1], to one random view each (in training mode only).

    Args:
        seed: int or None, seeds every layer's draws.
        crop: float in [0, 1), the largest fraction of each side cut away.
        jitter: float >= 0, brightness and contrast jitter factors.
        noise: float >= 0, the standard deviation of the added noise.
    """
    def s(i):
        return None if seed is None else seed + i

    return keras.Sequential(
        [
            layers.RandomZoom((-crop, 0.0), (-crop, 0.0), fill_mode="reflect", seed=s(0)),
            layers.RandomTranslation(crop / 2, crop / 2, fill_mode="reflect", seed=s(1)),
            layers.RandomFlip("horizontal", seed=s(2)),
            layers.RandomBrightness(jitter / 2, value_range=(0.0, 1.0), seed=s(3)),
            layers.RandomContrast(jitter, seed=s(4)),
            layers.GaussianNoise(noise, seed=s(5)),
        ],
        name="views",
    )
