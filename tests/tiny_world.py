"""The tests' one tiny world: a generated surface dataset and the banks `exdd offline build` makes from it.

One size and one set of build arguments for every test (the pytest fixtures `tiny_dataset` / `tiny_banks` in
conftest.py and triton_util.dataset() / banks() are the same folders, built once per pytest process): 6 normal
+ 3 defective training images and 3 + 3 test images of generated brushed metal, 128x64 pixels (the model input
size: a 16 x 8 patch grid), a random-init backbone (random:0), d = 16, at least 50 bank rows.
"""

from __future__ import annotations

from typing import Tuple

HW: Tuple[int, int] = (128, 64)  # image and model input size (H, W): 16 x 8 patches, fast on CPU
D = 16
WEIGHTS = "random:0"
MIN_BANK = 50
N_TRAIN_NORMAL, N_TRAIN_DEFECT, N_TEST_NORMAL, N_TEST_DEFECT = 6, 3, 3, 3
N_TEST = N_TEST_NORMAL + N_TEST_DEFECT
# the arguments of `exdd offline build` that make the tiny banks (add --projection pca ... for the pca banks)
BUILD_ARGS: Tuple[str, ...] = (
    "--weights",
    WEIGHTS,
    "--input-size",
    f"{HW[0]}x{HW[1]}",
    "--d",
    str(D),
    "--min-bank",
    str(MIN_BANK),
)


def generate_dataset(root: str, seed: int = 0, surface_kind: str = "brushed") -> str:
    """A KSDD2-layout dataset of the tiny world's size at root (another seed or surface kind gives other
    images of the same size); returns root."""
    from exdd.offline.surfaces import generate

    return generate(root, N_TRAIN_NORMAL, N_TRAIN_DEFECT, N_TEST_NORMAL, N_TEST_DEFECT, HW, surface_kind, seed)
