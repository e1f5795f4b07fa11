"""The one ``exdd`` command. Sub-command groups are imported lazily so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__

SUBCOMMANDS = {
    "offline": ("exdd.offline.cli", "offline", "Build banks from images, synthesize defects, evaluate."),
    "export": ("exdd.export.cli", "export", "ONNX / TensorRT export and Triton model-repository assembly."),
    "serve": ("exdd.serving.serve", "serve", "Start a local Triton server on a model repository."),
    "deploy": (
        "exdd.serving.deploy",
        "deploy_cmd",
        "Add new banks as a scorer version and load it on a running server (no downtime).",
    ),
    "client": ("exdd.client.cli", "client", "Score, stream, benchmark and evaluate through a Triton server."),
    "report": (
        "exdd.report.cli",
        "report",
        "Self-contained HTML report (metrics, ROC, histograms, heatmaps) of a results JSON.",
    ),
    "demo": ("exdd.demo", "demo", "The whole pipeline on bundled data: build, export, serve, score, report."),
}
# Commands of a lower package's group that live higher up the data flow: `exdd export repository` is
# serving's (it assembles the Triton repository), shown in the export group where users look for it.
EXTRA = {"export": (("exdd.serving.cli", "repository_cmd"),)}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        command = getattr(importlib.import_module(module), attr)
        for extra_module, extra_attr in EXTRA.get(name, ()):
            extra = getattr(importlib.import_module(extra_module), extra_attr)
            command.add_command(extra, extra.name)
        return command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in SUBCOMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exdd")
def main() -> None:
    """exdd: ExDD surface-defect detection, built offline and served on NVIDIA Triton."""
    from .log import configure

    configure()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
