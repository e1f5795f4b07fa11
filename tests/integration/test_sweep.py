"""`exdd offline synth --method paste` feeding `exdd offline sweep` and `build --synthetic` on a tiny dataset."""

import json

from conftest import TINY_ARGS, run_exdd
from PIL import Image

from exdd_scoring import MODES


def test_paste_synth_sweep_and_build(tiny_dataset, tmp_path):
    syn = tmp_path / "syn"
    run_exdd("offline", "synth", str(tiny_dataset), "--method", "paste", "--per-prompt", "2", "--out", str(syn))
    made = sorted(p.name for p in syn.glob("*.json"))
    assert made == [f"{i:05d}.json" for i in range(4)]
    side = json.loads((syn / "00000.json").read_text())
    assert side["method"] == "paste" and side["source_normal"] and side["source_mask"]
    assert Image.open(syn / "00000_GT.png").size == Image.open(syn / "00000.png").size

    out = tmp_path / "sweep"
    p = run_exdd(
        "offline",
        "sweep",
        str(tiny_dataset),
        "--synthetic",
        str(syn),
        "--counts",
        "0,2,4",
        "--out",
        str(out),
        *TINY_ARGS[: TINY_ARGS.index("--min-bank")],
        *TINY_ARGS[TINY_ARGS.index("--min-bank") + 2 :],
    )
    r = json.loads((out / "sweep.json").read_text())
    used = [row["synthetic_used"] for row in r["rows"]]
    assert used[0] == 0 and used[1] <= 2 and used[2] <= 4 and used[2] >= used[1] >= 1
    patches = [row["positive_patches"] for row in r["rows"]]
    assert patches[0] < patches[1] <= patches[2]
    for row in r["rows"]:
        assert set(row["metrics"]) == set(MODES)
    # the negative bank and the test split do not change with the synthetic count
    assert len({round(row["metrics"]["patchcore"]["image_auroc"], 6) for row in r["rows"]}) == 1
    assert (out / "sweep.png").stat().st_size > 1000 and "| synthetic samples |" in (out / "sweep.md").read_text()
    assert "| exdd |" in p.stdout

    banks = tmp_path / "banks"
    run_exdd("offline", "build", str(tiny_dataset), "--out", str(banks), "--synthetic", str(syn), *TINY_ARGS)
    m = json.loads((banks / "manifest.json").read_text())
    # the tiny world's 3 defective training images, 1 held out
    assert m["sources"]["synthetic_images"] == used[2] and m["sources"]["defect_images"] == 2
