"""One batched run over the requests of a Triton Python model's ``execute``: validate, concatenate, run once, split.

Both batched models (exdd_features, the scorers) answer through ``run_batched`` and so fail alike: a request
whose inputs are bad gets its own error response; when the batched run fails, every valid request is run
alone, so one request's failure never sinks the others. Independent of Triton: the model passes its own
functions (the backend's response and error types stay in model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence


@dataclass(frozen=True)
class Parsed:
    """One request's validated input: an array of n >= 1 images on its first axis, and what else it asked for."""

    array: Any
    context: Any = None  # per-request options (a threshold, the outputs it asked for), handed back to run/respond

    @property
    def n(self) -> int:
        return int(self.array.shape[0])


def part(result: Any, start: int, stop: int) -> Any:
    """Images start:stop of a run's result: an array, or an object with ``images(start, stop)`` (ScoreBatch)."""
    return result.images(start, stop) if hasattr(result, "images") else result[start:stop]


def run_batched(
    requests: Sequence[Any],
    parse: Callable[[Any], Parsed],
    run: Callable[[Any, List[Parsed]], Any],
    respond: Callable[[Any, Parsed], Any],
    error: Callable[[Exception], Any],
    concatenate: Callable[[List[Any]], Any],
) -> List[Any]:
    """The response of every request, in order.

    parse(request) -> Parsed (raises on bad input: that request's error(e)); run(batch, parsed) -> a result of
    the concatenated arrays (run once for the batch, again per request if that fails); respond(result's share,
    parsed) -> the request's response; concatenate(arrays) -> one batch (numpy.concatenate, cupy.concatenate).
    """
    responses: List[Optional[Any]] = [None] * len(requests)
    good = []
    for i, request in enumerate(requests):
        try:
            good.append((i, parse(request)))
        except Exception as e:  # any bad input is that request's error only
            responses[i] = error(e)
    if not good:
        return responses
    try:
        parsed = [p for _, p in good]
        batch = parsed[0].array if len(parsed) == 1 else concatenate([p.array for p in parsed])
        result = run(batch, parsed)
        answers, start = [], 0
        for _, p in good:
            answers.append(respond(part(result, start, start + p.n), p))
            start += p.n
        for (i, _), answer in zip(good, answers):
            responses[i] = answer
    except Exception:  # run each request alone so one failure cannot sink the batch
        for i, p in good:
            try:
                responses[i] = respond(run(p.array, [p]), p)
            except Exception as e:
                responses[i] = error(e)
    return responses
