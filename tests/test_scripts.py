"""scripts/: every script imports as a module of its kind, and the shared helpers do what the scripts rely on."""
from __future__ import annotations

import importlib
import os
import pkgutil

import pytest

import scripts
from scripts import common
from conftest import TINY_HW


def test_every_script_imports_as_a_module_of_its_kind():
    kinds = {m.name for m in pkgutil.iter_modules(scripts.__path__) if m.ispkg}
    assert kinds == {"benchmarks", "studies", "tools"}
    names = []
    for kind in sorted(kinds):
        pkg = importlib.import_module(f"scripts.{kind}")
        for m in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"scripts.{kind}.{m.name}")
            assert callable(getattr(mod, "main")), f"scripts.{kind}.{m.name} has no main()"
            names.append(m.name)
    assert {"bench_coreset", "sweep_d", "gpu_check", "soak"} <= set(names)


def test_link_subset_links_images_with_their_masks_and_numbers_on_request(tiny_dataset, tmp_path):
    src = tiny_dataset / "train"
    images = sorted(str(p) for p in src.glob("*.png") if not p.name.endswith("_GT.png"))[:3]
    pairs = [(p, common.mask_of(p)) for p in images]
    assert all(m is not None and os.path.isfile(m) for _, m in pairs)
    out = common.link_subset(str(tmp_path / "a" / "train"), pairs)
    assert sorted(os.listdir(out)) == sorted([os.path.basename(p) for p in images] +
                                             [os.path.basename(m) for _, m in pairs])
    assert all(os.path.realpath(os.path.join(out, os.path.basename(p))) == os.path.realpath(p) for p in images)
    numbered = common.link_subset(str(tmp_path / "b" / "train"), pairs, numbered=True)
    assert sorted(os.listdir(numbered)) == ["00000.png", "00000_GT.png", "00001.png", "00001_GT.png",
                                            "00002.png", "00002_GT.png"]
    assert common.mask_of(str(tmp_path / "none.png")) is None


def test_cache_folder_names_the_dataset_and_input_size():
    assert common.cache_folder("runs/cache", "../shared/data/magnetic_tile/", (632, 224), "train") == \
        os.path.join("runs/cache", "magnetic_tile-632x224", "train")


def test_raw_caches_then_normal_rows_give_the_projected_defect_free_patches(tiny_dataset, tmp_path):
    caches = common.raw_caches(str(tiny_dataset), "random:0", TINY_HW, str(tmp_path), splits=("train",), progress=False)
    c = caches["train"]
    folder = common.cache_folder(str(tmp_path), str(tiny_dataset), TINY_HW, "train")
    assert os.path.isfile(os.path.join(folder, "meta.json"))
    rows = common.normal_rows(folder, 16, 2)
    normal = [i for i in range(len(c.paths)) if c.covers[i].max() == 0]
    grid = c.covers[0].shape
    assert len(normal) >= 2 and rows.shape == (2 * grid[0] * grid[1], 16)


def test_exdd_runner_returns_seconds_and_raises_with_stderr(tmp_path):
    assert common.exdd("--help") > 0
    lines = []
    with pytest.raises(RuntimeError, match="offline evaluate"):
        common.exdd("offline", "evaluate", str(tmp_path / "absent"), "--banks", str(tmp_path), log=lines.append)
    assert lines and lines[0].startswith("$ exdd offline evaluate")


def test_peak_rss_is_this_process_in_gib():
    assert 0.01 < common.peak_rss_gb() < 1024


def test_save_json_writes_the_record_whole_into_a_new_folder(tmp_path):
    import json
    path = tmp_path / "new" / "bench.json"
    assert common.save_json(str(path), {"a": [1, 2]}, indent=2) == str(path)
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().startswith("{\n  ")
    assert os.listdir(path.parent) == ["bench.json"]          # no temporary file left behind
