"""exdd_scoring.batching: the one validate-concatenate-run-split of the batched Triton models (exdd_features and the
scorers run it on a real server in test_triton.py; here its failure rules, with plain arrays)."""

import numpy as np

from exdd_scoring.batching import Parsed, run_batched


def parse(request):
    if request is None:
        raise ValueError("input X is missing")
    return Parsed(np.asarray(request, dtype=float), context=len(request))


def test_one_run_split_back_in_order_and_a_bad_request_gets_its_own_error():
    runs = []

    def run(batch, parsed):
        runs.append(batch.shape[0])
        return batch * 10

    out = run_batched(
        [[1, 2], None, [3], [4, 5, 6]],
        parse,
        run,
        lambda part, p: ("ok", part.tolist(), p.context),
        lambda e: ("error", str(e)),
        np.concatenate,
    )
    assert out == [("ok", [10, 20], 2), ("error", "input X is missing"), ("ok", [30], 1), ("ok", [40, 50, 60], 3)]
    assert runs == [6]  # the valid requests in one run


def test_a_failing_batched_run_is_retried_per_request_so_one_failure_cannot_sink_the_others():
    def run(batch, parsed):
        if (batch < 0).any():
            raise RuntimeError("negative input")
        return batch + 1

    out = run_batched(
        [[1], [-1, 2], [3]], parse, run, lambda part, p: part.tolist(), lambda e: f"error: {e}", np.concatenate
    )
    assert out == [[2], "error: negative input", [4]]


def test_all_requests_bad_runs_nothing():
    def run(batch, parsed):
        raise AssertionError("must not run")

    assert run_batched([None, None], parse, run, lambda part, p: part, str, np.concatenate) == [
        "input X is missing",
        "input X is missing",
    ]
