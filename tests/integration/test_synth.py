"""`exdd offline synth`: SDXL inpainting end to end with a tiny random-weight pipeline, resuming, errors, paste."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from exdd.datasets import synthetic
from exdd.images import read_mask
from exdd.offline.synth.diffmask import DiffMaskRule, diff_mask, dilate
from exdd.offline.synth.plan import Source, make_plan


def synth(*args: str):
    """Run `exdd offline synth ARGS` in-process (diffusers is imported once per test session)."""
    from exdd.offline.cli import offline

    return CliRunner().invoke(offline, ["synth", *map(str, args)], catch_exceptions=False)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins of GPT-2/CLIP byte-level BPE, in byte order of their table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A StableDiffusionXLInpaintPipeline with tiny random weights, saved (safetensors) to a folder."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sdxl")
    chars = _bytes_to_unicode()  # a character-level vocabulary: every text tokenizes, no merges needed
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
    )
    torch.manual_seed(0)
    text_cfg = CLIPTextConfig(
        vocab_size=len(vocab) + 8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        max_position_embeddings=77,
    )
    # SDXL: cross-attention on both encoders' hidden states (16 + 16); "text_time" added embedding of
    # the pooled projection (16) and the 6 size/crop conditioning numbers (6 x 4); 9 inpainting channels
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=4,
        cross_attention_dim=32,
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_cfg),
        text_encoder_2=CLIPTextModelWithProjection(text_cfg),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
    )
    model = root / "model"
    pipe.save_pretrained(str(model), safe_serialization=True)
    assert not list(model.rglob("*.bin")) and list(model.rglob("*.safetensors"))
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny grayscale KSDD2-layout dataset: 5 normal + 3 defective training images."""
    from exdd.offline.surfaces import generate

    root = tmp_path_factory.mktemp("synthdata") / "d"
    generate(str(root), 5, 3, 1, 1, (80, 48), "brushed", 0)
    return root


SDXL_ARGS = ["--per-prompt", "2", "--steps", "2", "--work-size", "64", "--device", "cpu"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _pngs(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(folder).items() if k.endswith(".png")}


def test_sdxl_end_to_end_resume_and_refusal(tiny_sdxl, data, tmp_path):
    out = tmp_path / "sd"
    r = synth(data, "--out", out, "--model", tiny_sdxl, *SDXL_ARGS)
    assert r.exit_code == 0, r.output
    assert "4 of 4 done (4 made now" in r.output and "runs on the CPU" in r.output
    assert sorted(os.listdir(out)) == sorted(f"{i:05d}{s}" for i in range(4) for s in (".png", "_GT.png", ".json"))
    for i in range(4):
        side = json.loads((out / f"{i:05d}.json").read_text())
        assert side["method"] == "sdxl" and side["model"] == str(tiny_sdxl) and side["index"] == i
        assert side["prompt"] == ("white marks on the wall", "copper metal scratches")[i // 2]
        assert side["negative_prompt"] == "smooth, plain, black, dark, shadow"
        assert side["settings"] == {
            "steps": 2,
            "guidance": 20.0,
            "strength": 0.99,
            "padding_mask_crop": 2,
            "work_size": 64,
            "dtype": "float32",
            "plan_seed": 0,
            "per_prompt": 2,
            "prompts": ["white marks on the wall", "copper metal scratches"],
        }
        assert side["positive_mask"]["threshold"] == "otsu" and side["exdd_version"]
        normal = Image.open(data / side["source_normal"])
        img, gt = Image.open(out / side["image"]), Image.open(out / side["mask"])
        assert img.size == normal.size and gt.size == normal.size and img.mode == "L"  # grayscale dataset
        g = np.asarray(gt)
        assert set(np.unique(g)) <= {0, 255} and side["positive_pixels"] == int((g > 0).sum())
        # positives only where the inpainting mask (resized nearest to this image) reaches, dilated
        inpaint = read_mask(str(data / side["source_mask"]), None, (normal.size[1], normal.size[0]))
        assert not ((g > 0) & ~dilate(inpaint, side["positive_mask"]["dilate_px"])).any()
        # the random-weight model changes the masked pixels, and only those (after resizing back)
        diff = np.abs(np.asarray(img, np.int16) - np.asarray(normal.convert("L"), np.int16))
        assert diff[inpaint].mean() > 10 * max(diff[~dilate(inpaint, 4)].mean(), 0.1)
    assert len(synthetic(str(out))) == sum(
        not json.loads((out / f"{i:05d}.json").read_text())["empty"] for i in range(4)
    )
    full = _pngs(out)

    # interrupted: sample 3 never started, sample 2 stopped after its pictures but before its sidecar
    for name in ("00003.png", "00003_GT.png", "00003.json", "00002.json"):
        (out / name).unlink()
    r = synth(data, "--out", out, "--model", tiny_sdxl, *SDXL_ARGS)
    assert r.exit_code == 0, r.output
    assert "2 made now, 2 already there" in r.output
    assert _pngs(out) == full and len(os.listdir(out)) == 12

    # a run stopped by --limit, then resumed, makes what the uninterrupted run made
    part = tmp_path / "part"
    r = synth(data, "--out", part, "--model", tiny_sdxl, *SDXL_ARGS, "--limit", "1")
    assert r.exit_code == 0 and "1 of 4 done" in r.output, r.output
    r = synth(data, "--out", part, "--model", tiny_sdxl, *SDXL_ARGS)
    assert r.exit_code == 0 and "3 made now, 1 already there" in r.output, r.output
    assert _pngs(part) == full

    # other arguments on a folder that holds samples: refused, nothing mixed
    before = _files(out)
    r = synth(data, "--out", out, "--model", tiny_sdxl, *SDXL_ARGS, "--seed", "1")
    assert r.exit_code == 2 and "made with other arguments" in r.output and "Traceback" not in r.output
    assert _files(out) == before


def test_unloadable_model_is_a_clear_error(data, tmp_path):
    pytest.importorskip("diffusers")
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    for model in (empty, tmp_path / "missing" / "model"):
        r = synth(data, "--out", tmp_path / "o", "--model", model, *SDXL_ARGS)
        assert r.exit_code == 2, r.output
        assert f"cannot load the SDXL inpainting model '{model}'" in r.output and "Traceback" not in r.output
        assert not list((tmp_path / "o").glob("*.png"))


def test_paste_method(data, tmp_path):
    out = tmp_path / "paste"
    r = synth(data, "--out", out, "--method", "paste", "--per-prompt", "3", "--seed", "5")
    assert r.exit_code == 0 and "6 of 6 done" in r.output, r.output
    assert len(synthetic(str(out))) == 6  # every pasted sample has a defect
    for i in range(6):
        side = json.loads((out / f"{i:05d}.json").read_text())
        assert side["method"] == "paste" and side["prompt"] is None
        assert "pasted defect mask" in side["positive_mask"]["rule"]
        normal = Image.open(data / side["source_normal"])
        img = np.asarray(Image.open(out / f"{i:05d}.png"))
        gt = np.asarray(Image.open(out / f"{i:05d}_GT.png")) > 0
        assert img.shape == gt.shape == (normal.size[1], normal.size[0]) and img.ndim == 2
        # the defect keeps its area (no shrinking needed here) and lies fully inside the image
        src = read_mask(str(data / side["source_mask"]), None)
        assert side["paste"]["scale"] == 1.0 and gt.sum() == src.sum() == side["positive_pixels"]
        ty, tx, bh, bw = side["paste"]["box_yxhw"]
        box = np.zeros_like(gt)
        box[ty : ty + bh, tx : tx + bw] = True
        assert ty >= 0 and tx >= 0 and ty + bh <= gt.shape[0] and tx + bw <= gt.shape[1] and not (gt & ~box).any()
        diff = np.abs(img.astype(np.int16) - np.asarray(normal, np.int16))
        assert diff[~box].max() == 0 and diff[gt].mean() > 5  # only the box changes; the defect shows
    again = tmp_path / "again"
    assert synth(data, "--out", again, "--method", "paste", "--per-prompt", "3", "--seed", "5").exit_code == 0
    assert _pngs(again) == _pngs(out)


def test_diff_mask_rule():
    rng = np.random.default_rng(0)
    orig = rng.integers(90, 110, (40, 50, 3), dtype=np.uint8)
    inpaint = np.zeros((40, 50), bool)
    inpaint[10:30, 10:30] = True
    assert not diff_mask(orig, orig.copy(), inpaint).any()  # nothing changed -> empty mask
    gen = orig.copy()
    gen[15:20, 12:28] = 230  # a bright mark inside the inpainted region
    gen[0:4, 40:50] = 0  # a change far from it (resampling noise) is ignored
    gen = np.clip(gen.astype(int) + rng.integers(-3, 4, gen.shape), 0, 255).astype(np.uint8)
    m = diff_mask(orig, gen, inpaint, DiffMaskRule(blur_sigma=0.0))
    want = np.zeros_like(inpaint)
    want[15:20, 12:28] = True
    assert (m == want).all()


def test_plan_is_a_pure_function_of_its_arguments():
    normals = [f"n{i}" for i in range(7)]
    sources = [Source(f"d{i}", f"d{i}_GT") for i in range(3)]
    a = make_plan(normals, sources, ["p", "q"], 4, 11)
    assert a == make_plan(normals, sources, ["p", "q"], 4, 11) and len(a) == 8
    assert [s.prompt for s in a] == ["p"] * 4 + ["q"] * 4 and len({s.seed for s in a}) == 8
    assert a != make_plan(normals, sources, ["p", "q"], 4, 12)
    with pytest.raises(ValueError, match="non-empty mask"):
        make_plan(normals, [], ["p"], 1, 0)
