"""The batcher on its own: real asyncio and a real worker thread, a counting stand-in for the model."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtimes.batching import Batcher, rows_of
from runtimes.tensors import Tensors


class Doubler:
    """y = 2x per row; refuses negative rows the way a handler refuses bad input (ValueError)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.gate = gate

    def __call__(self, inputs: Tensors) -> Tensors:
        if self.gate is not None:
            self.gate.wait(5)
        x = inputs["x"]
        self.calls.append(len(x))
        if (x < 0).any():
            raise ValueError("x must not be negative")
        return {"y": x * 2}


def rows(*values: float, width: int = 2) -> Tensors:
    return {"x": np.array([[v] * width for v in values], dtype=np.float32)}


async def gather(batcher: Batcher, requests: list[Tensors]) -> list[object]:
    return await asyncio.wait_for(asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True), 10)


def run(model: Doubler, requests: list[Tensors], *, size: int = 8, latency: float = 0.05) -> tuple[list, Batcher]:
    async def main() -> tuple[list, Batcher]:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=size, max_latency_s=latency, name="t")
            try:
                return await gather(batcher, requests), batcher
            finally:
                batcher.close()
    return asyncio.run(main())


def test_concurrent_requests_share_one_model_call_and_get_their_own_rows() -> None:
    model = Doubler()
    requests = [rows(1), rows(2, 3), rows(4), rows(5, 6, 7)]
    results, batcher = run(model, requests)

    assert model.calls == [7]
    for request, (outputs, batch_rows) in zip(requests, results, strict=True):
        np.testing.assert_array_equal(outputs["y"], request["x"] * 2)
        assert batch_rows == 7
    assert (batcher.stats.batches, batcher.stats.requests, batcher.stats.largest) == (1, 4, 7)


def test_a_full_batch_runs_without_waiting_for_the_latency_bound() -> None:
    model = Doubler()
    # a latency bound far beyond the test's 10 s deadline: only a full batch can finish it
    results, _ = run(model, [rows(i) for i in range(4)], size=4, latency=60)
    assert model.calls == [4]
    assert all(isinstance(r, tuple) for r in results)


def test_batches_never_exceed_max_batch_size_and_keep_arrival_order() -> None:
    model = Doubler()
    requests = [rows(i, i) for i in range(7)]  # 14 rows, 2 per request
    results, _ = run(model, requests, size=4)

    assert sum(model.calls) == 14 and max(model.calls) <= 4
    assert [int(r[0]["y"][0, 0]) for r in results] == [2 * i for i in range(7)]


def test_one_bad_request_fails_alone() -> None:
    model = Doubler()
    results, batcher = run(model, [rows(1), rows(-1), rows(2, 3)])

    assert isinstance(results[1], ValueError) and "negative" in str(results[1])
    np.testing.assert_array_equal(results[0][0]["y"], rows(2)["x"])
    np.testing.assert_array_equal(results[2][0]["y"], rows(4, 6)["x"])
    assert model.calls[0] == 4 and sorted(model.calls[1:]) == [1, 1, 2]  # the batch, then each alone
    assert batcher.stats.retried == 1


def test_requests_of_different_shapes_are_not_merged() -> None:
    model = Doubler()
    results, _ = run(model, [rows(1, width=2), rows(2, width=3), rows(3, width=2)])

    assert sorted(model.calls) == [1, 2]  # the width-2 pair together, the width-3 one alone
    assert results[1][0]["y"].shape == (1, 3)


def test_a_request_larger_than_a_batch_runs_whole_and_alone() -> None:
    model = Doubler()
    results, _ = run(model, [rows(*range(10)), rows(1)], size=4)

    assert sorted(model.calls) == [1, 10]
    assert results[0][0]["y"].shape == (10, 2)


def test_requests_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    gate = threading.Event()
    model = Doubler(gate)

    async def main() -> list:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, executor, max_batch_size=16, max_latency_s=0.0, name="t")
            first = asyncio.ensure_future(batcher.submit(rows(1)))
            while not batcher.stats.batches:  # the first call is on its way into the (blocked) model
                await asyncio.sleep(0.001)
            later = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(2, 7)]
            await asyncio.sleep(0)  # let them queue
            gate.set()
            done = await asyncio.wait_for(asyncio.gather(first, *later), 10)
            batcher.close()
            return done

    results = asyncio.run(main())
    assert model.calls == [1, 5]
    assert [r[1] for r in results] == [1, 5, 5, 5, 5, 5]


@pytest.mark.parametrize(("tensors", "expected"), [
    ({"a": np.zeros((3, 2)), "b": np.zeros(3)}, 3),
    ({"a": np.zeros((3, 2)), "b": np.zeros(2)}, None),  # inputs disagree: cannot be merged
    ({"a": np.zeros((0, 2))}, None),
])
def test_rows_of(tensors: Tensors, expected: int | None) -> None:
    assert rows_of(tensors) == expected
