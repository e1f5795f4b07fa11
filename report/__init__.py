"""The self-contained HTML report of an evaluation results JSON."""
