"""``exdd offline synth``: synthetic defects for the positive bank (SDXL inpainting or Poisson paste)."""

from __future__ import annotations

import os

import click

from exdd.cli_common import fail

from .synth.methods import SYNTH_METHODS


def _prompts(prompts_file: str | None) -> list[str]:
    from .synth.sdxl import DEFAULT_PROMPTS

    if prompts_file is None:
        return list(DEFAULT_PROMPTS)
    try:
        with open(prompts_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{prompts_file}: cannot read the prompts file ({e})")
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        fail(f"{prompts_file}: no prompts (one prompt per line; blank lines and # comments are ignored)")
    return prompts


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of NNNNN.png + NNNNN_GT.png + NNNNN.json (for `offline build --synthetic`).",
)
@click.option(
    "--method",
    default="sdxl",
    type=click.Choice(list(SYNTH_METHODS)),
    show_default=True,
    help="; ".join(f"{m.name}: {m.help}" for m in SYNTH_METHODS.values()) + ".",
)
@click.option(
    "--model",
    default=None,
    help="Model id or local folder of an SDXL inpainting pipeline "
    "[default: diffusers/stable-diffusion-xl-1.0-inpainting-0.1].",
)
@click.option(
    "--per-prompt",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per prompt (paste makes as many samples as sdxl would).",
)
@click.option(
    "--prompts-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="One prompt per line [default: 'white marks on the wall', 'copper metal scratches'].",
)
@click.option("--negative-prompt", default=None, help="[default: 'smooth, plain, black, dark, shadow']")
@click.option("--steps", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--guidance", default=20.0, show_default=True, type=float)
@click.option("--strength", default=0.99, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True))
@click.option("--padding-mask-crop", default=2, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--work-size",
    default=1024,
    show_default=True,
    type=click.IntRange(min=8),
    help="Inpainting resolution (square; a multiple of 8); results are resized back.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the sample plan (normals, masks, seeds).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=0),
    help="Make at most this many new samples in this run (rerun to continue).",
)
def synth(
    dataset,
    out_dir,
    method,
    model,
    per_prompt,
    prompts_file,
    negative_prompt,
    steps,
    guidance,
    strength,
    padding_mask_crop,
    work_size,
    seed,
    device,
    limit,
):
    """Synthesize defective images from DATASET's training set into --out (resumable).

    Each sample inpaints (sdxl) or pastes (paste) a real defect mask of a defective training
    image onto a random normal training image. Rerunning with the same arguments continues
    where a run stopped.
    """
    from exdd.datasets import DatasetError

    from .synth.diffmask import DiffMaskRule
    from .synth.run import SynthConfig, synthesize
    from .synth.sdxl import DEFAULT_MODEL, DEFAULT_NEGATIVE, SDXLSettings, SynthError, load_pipeline, resolve_device

    if work_size % 8:
        fail(f"--work-size {work_size}: must be a multiple of 8")
    sdxl = SYNTH_METHODS[method].uses_pipeline
    model = model or DEFAULT_MODEL
    cfg = SynthConfig(
        dataset=dataset,
        out_dir=out_dir,
        method=method,
        model=model,
        prompts=_prompts(prompts_file),
        negative_prompt=DEFAULT_NEGATIVE if negative_prompt is None else negative_prompt,
        per_prompt=per_prompt,
        seed=seed,
        sdxl=SDXLSettings(
            steps=steps, guidance=guidance, strength=strength, padding_mask_crop=padding_mask_crop, work_size=work_size
        ),
        rule=DiffMaskRule(),
        limit=limit,
    )
    note = lambda m: click.echo(m, err=True)  # noqa: E731
    dev, dtype = "cpu", "float32"
    if sdxl:
        if int(steps * strength) < 1:
            fail(f"--steps {steps} x --strength {strength} leaves no denoising step; raise --steps")
        try:
            dev, dtype = resolve_device(device)
        except SynthError as e:
            fail(str(e))

    def load():
        where = "local folder" if os.path.isdir(model) else "model id"
        note(f"model: {model} ({where}), {dev}, {dtype}")
        if dev == "cpu":
            note(
                "note: no GPU in use -- SDXL inpainting runs on the CPU in float32, which is very slow "
                "(minutes per sample at 1024x1024)"
            )
        return load_pipeline(model, dev, dtype)

    try:
        res = synthesize(cfg, dev, dtype, load if sdxl else None, note)
    except (SynthError, DatasetError) as e:
        fail(str(e))
    click.echo(f"synthetic: {os.path.abspath(out_dir)}")
    click.echo(
        f"samples: {res.skipped + res.made} of {res.planned} done ({res.made} made now, "
        f"{res.skipped} already there); empty positive mask: {res.empty} of those made now"
    )
    click.echo(f"time: {res.seconds:.1f}s")
