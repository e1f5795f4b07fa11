"""``exdd report``: one self-contained HTML report from an evaluation results JSON."""

from __future__ import annotations

import os

import click

from exdd.cli_common import fail


@click.command()
@click.argument("results_json", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_html",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="HTML file to write; the JSON behind it goes next to it (same name, .json).",
)
@click.option("--title", default="ExDD evaluation report", show_default=True)
@click.option(
    "--gallery", "gallery_n", default=6, show_default=True, help="At most this many thumbnails per gallery group."
)
def report(results_json: str, out_html: str, title: str, gallery_n: int) -> None:
    """Write an HTML report (metrics, ROC, histograms, heatmap gallery) of RESULTS_JSON."""
    from exdd.results import EvaluationResults, ResultsError

    from .html import json_path_of, write_report

    try:
        results = EvaluationResults.load(results_json).to_dict()
    except ResultsError as e:
        fail(str(e))
    out_json = json_path_of(out_html)
    if os.path.abspath(out_json) == os.path.abspath(results_json):
        fail(f"--out {out_html} would overwrite its input {results_json} with the report's JSON; choose another name")
    base_dir = os.path.dirname(os.path.abspath(results_json))
    try:
        write_report(results, out_html, title, base_dir, gallery_n)
    except OSError as e:
        fail(f"cannot write {out_html}: {e}")
    n = len(results.get("images") or [])
    click.echo(f"report: {out_html} ({n} images, {os.path.getsize(out_html) / 1024:.0f} KiB)")
    click.echo(f"data: {out_json}")
