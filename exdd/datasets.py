"""Dataset layouts: KSDD2, MVTec AD and a plain folder of images.

Every dataset becomes a list of ``Sample`` (image path, mask path or None, label, split, kind).
- KSDD2: ``train/`` and ``test/`` with ``NNNNN.png`` + ``NNNNN_GT.png``; defective iff the mask
  has a nonzero pixel.
- MVTec AD: ``train/good``, ``test/<type>``, ``ground_truth/<type>/<name>_mask.png``.
- folder: every image below a folder (recursively), for scoring only (no labels).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image

from exdd.images import ImageReadError, is_image_name, walk_files
from exdd.registry import register_unique
from exdd_scoring.bank import sha256_file


class DatasetError(ValueError):
    """A dataset folder that does not have a known layout or is inconsistent."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset; label 1 = defective, 0 = normal, -1 = unknown."""

    path: str
    mask: Optional[str]
    label: int
    split: str
    kind: str = ""


def _images(folder: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if is_image_name(f) and not f.startswith("."))


def _mask_has_defect(path: str) -> int:
    try:
        with Image.open(path) as m:
            return int(np.asarray(m.convert("L")).max() > 0)
    except Exception as e:  # reported as this file's error
        raise ImageReadError(f"{path}: unreadable mask ({e})") from None


def ksdd2(root: str, split: str) -> List[Sample]:
    """KSDD2 layout: root/split/NNNNN.png with NNNNN_GT.png beside it."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DatasetError(f"{root}: no '{split}/' folder (KSDD2 layout)")
    out = []
    for p in _images(folder):
        stem, ext = os.path.splitext(os.path.basename(p))
        if stem.endswith("_GT"):
            continue
        gt = os.path.join(folder, f"{stem}_GT{ext}")
        if not os.path.isfile(gt):
            gt = os.path.join(folder, f"{stem}_GT.png")
        if not os.path.isfile(gt):
            raise DatasetError(f"{p}: no mask {os.path.basename(gt)} beside it (KSDD2 layout)")
        out.append(Sample(p, gt, _mask_has_defect(gt), split, ""))
    return out


def mvtec(root: str, split: str) -> List[Sample]:
    """MVTec AD layout: train/good, test/<type>, ground_truth/<type>/<name>_mask.png."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DatasetError(f"{root}: no '{split}/' folder (MVTec AD layout)")
    out = []
    for kind in sorted(os.listdir(folder)):
        kdir = os.path.join(folder, kind)
        if not os.path.isdir(kdir):
            continue
        for p in _images(kdir):
            if kind == "good":
                out.append(Sample(p, None, 0, split, kind))
                continue
            stem = os.path.splitext(os.path.basename(p))[0]
            gt = os.path.join(root, "ground_truth", kind, f"{stem}_mask.png")
            if not os.path.isfile(gt):
                raise DatasetError(f"{p}: no mask ground_truth/{kind}/{stem}_mask.png (MVTec AD layout)")
            out.append(Sample(p, gt, 1, split, kind))
    return out


def folder_images(root: str) -> List[Sample]:
    """Every image file below root, recursively, unlabelled."""
    if os.path.isfile(root):
        return [Sample(root, None, -1, "score")]
    return [Sample(p, None, -1, "score") for p in walk_files(root)]


@dataclass(frozen=True)
class Layout:
    """A dataset layout: how to list a split, and how to recognise a folder in this layout."""

    name: str
    load: Callable[[str, str], List[Sample]]  # (root, split) -> samples
    detect: Callable[[str], bool]  # whether root looks like this layout
    labelled: bool = True  # has normal/defect labels (usable for building banks)
    help: str = ""


# Registration order is detection order: the first layout whose detect() accepts a folder wins.
LAYOUTS: Dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add a layout (names are unique); `--layout` choices and auto-detection come from LAYOUTS."""
    return register_unique(LAYOUTS, layout, "dataset layout", reserved=("auto",))


def layout_choices(labelled_only: bool = False) -> List[str]:
    """'auto' and the registered layout names (only labelled ones when asked)."""
    return ["auto"] + [n for n, lay in LAYOUTS.items() if lay.labelled or not labelled_only]


register_layout(
    Layout(
        "mvtec",
        mvtec,
        lambda r: os.path.isdir(os.path.join(r, "train", "good")),
        help="train/good, test/<type>, ground_truth/<type>/<name>_mask.png",
    )
)
register_layout(
    Layout(
        "ksdd2",
        ksdd2,
        lambda r: os.path.isdir(os.path.join(r, "train")) or os.path.isdir(os.path.join(r, "test")),
        help="train|test/NNNNN.png + NNNNN_GT.png",
    )
)
register_layout(
    Layout(
        "folder",
        lambda r, split: folder_images(r),
        lambda r: True,
        labelled=False,
        help="every image below the folder, unlabelled (scores only)",
    )
)


def detect_layout(root: str) -> str:
    """The name of the first registered layout that recognises root ('mvtec', 'ksdd2', else 'folder')."""
    if not os.path.exists(root):
        raise DatasetError(f"{root}: no such dataset folder")
    return next(n for n, lay in LAYOUTS.items() if lay.detect(root))


def load_split(root: str, split: str, layout: str = "auto") -> List[Sample]:
    """The samples of one split ('train' or 'test') of a dataset."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r} ({', '.join(layout_choices())})")
    return LAYOUTS[layout].load(root, split)


def synthetic(root: str) -> List[Sample]:
    """A synthetic-defect folder: NNNNN.png + NNNNN_GT.png (+ NNNNN.json), all defective."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such synthetic-defect folder")
    items = ksdd2(os.path.dirname(root.rstrip("/")) or ".", os.path.basename(root.rstrip("/")))
    return [Sample(s.path, s.mask, 1, "synthetic", "synthetic") for s in items if s.label == 1]


HOLDOUT_RULE = "sha256(seed:content)"  # the manifest's sources.heldout_rule for holdout_split (issue 25)


def content_key(sample: Sample) -> str:
    """sha256 of the image's bytes (and of its mask's, after a colon): what the sample is, whatever it is named.

    A file that cannot be read keys by its path (its extraction reports the error)."""
    parts = []
    for p in (sample.path, sample.mask):
        if p is not None:
            h = _content_hash(p)
            parts.append(h if h is not None else "path:" + os.path.abspath(p))
    return ":".join(parts)


def canonical_order(samples: Sequence[Sample]) -> List[Sample]:
    """The samples sorted by content key (then path, which only byte-identical copies need): the order a build
    extracts and stacks them in, so that the chunks of its coreset do not depend on file names or listing order."""
    return sorted(samples, key=lambda s: (content_key(s), s.path))


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[List[Sample], List[Sample]]:
    """(kept, held_out), both in ``canonical_order``: per label, the round(fraction x n) images (at least 1 and
    at most n - 1 when fraction > 0 and n >= 2) with the smallest sha256 of "SEED:<content key>".

    A function of the images' bytes and the seed only (rule ``HOLDOUT_RULE``): not of their names, their listing
    order or the machine. The seed salts which images calibrate: another seed holds out other images.
    """
    ordered = canonical_order(samples)
    held: Set[int] = set()
    for label in (0, 1):
        group = [s for s in ordered if s.label == label]
        n_hold = int(round(fraction * len(group)))
        if fraction > 0 and len(group) >= 2:
            n_hold = max(1, min(n_hold, len(group) - 1))
        salted = sorted(
            range(len(group)), key=lambda i: (hashlib.sha256(f"{seed}:{content_key(group[i])}".encode()).hexdigest(), i)
        )
        held.update(id(group[i]) for i in salted[:n_hold])
    return [s for s in ordered if id(s) not in held], [s for s in ordered if id(s) in held]


def legacy_holdout_split(samples: List[Sample], fraction: float, seed: int) -> tuple[List[Sample], List[Sample]]:
    """The hold-out of banks built before issue 25 (manifest without sources.heldout_rule): a seeded permutation
    of each label's images in listing order. Kept to recalibrate such banks on the images they held out."""
    rng = np.random.default_rng(seed)
    kept: List[Sample] = []
    held: List[Sample] = []
    for label in (0, 1):
        group = [s for s in samples if s.label == label]
        n_hold = int(round(fraction * len(group)))
        if fraction > 0 and len(group) >= 2:
            n_hold = max(1, min(n_hold, len(group) - 1))
        order = rng.permutation(len(group))
        hold = set(order[:n_hold].tolist())
        for i, s in enumerate(group):
            (held if i in hold else kept).append(s)
    return kept, held


_HASHES: Dict[Tuple[str, int, int], str] = {}  # (abspath, size, mtime_ns) -> sha256: a build hashes each file once


def _content_hash(path: str) -> Optional[str]:
    """sha256 of a file's bytes, or None when it cannot be read."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(path)
        return _HASHES[key]
    except OSError:
        return None


def duplicates_across(samples: Sequence[Sample], reference: Sequence[Sample]) -> List[Tuple[str, str]]:
    """(sample path, reference path) for every sample whose file is byte-identical to a reference file.

    A test image that is also a training image leaks into an evaluation (it may sit in the banks); found
    by content, so renamed or re-numbered copies count.
    """
    ref: Dict[str, str] = {}
    for r in reference:
        h = _content_hash(r.path)
        if h is not None:
            ref.setdefault(h, r.path)
    out = []
    for s in samples:
        h = _content_hash(s.path)
        if h is not None and h in ref and os.path.abspath(ref[h]) != os.path.abspath(s.path):
            out.append((s.path, ref[h]))
    return out


def training_copies(root: str, samples: Sequence[Sample], split: str, layout: str = "auto") -> List[Tuple[str, str]]:
    """``duplicates_across(samples, root's training split)`` for a split of a labelled layout; [] where the layout
    has no separate training split (e.g. a plain folder) or there is none."""
    name = detect_layout(root) if layout == "auto" else layout
    if split == "train" or name not in LAYOUTS or not LAYOUTS[name].labelled:
        return []
    try:
        train = load_split(root, "train", name)
    except (DatasetError, OSError):
        return []
    return duplicates_across(samples, train)


def leak_message(pairs: Sequence[Tuple[str, str]], what: str) -> str:
    """One line naming how many images are copies of training images, with an example."""
    a, b = pairs[0]
    return (
        f"{len(pairs)} {what} byte-identical to training images (e.g. {a} = {b}): "
        f"they may be in the banks, so their scores are not a test"
    )
