"""Two Contexts of one wasm Model in two threads: while one ingests a long prompt (chunk by
chunk), a short generate in the other gets its turn between chunks instead of waiting for the
whole prompt."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from helpers import load_model


def test_a_short_generate_runs_between_the_chunks_of_a_long_prompt(synthetic_model: Path) -> None:
    with load_model(synthetic_model, "wasm") as model:
        long_prompt = (model.tokenize("word " * 2100, add_special=False) * 2)[:2000]
        events: dict[str, float] = {}
        with model.new_context(n_ctx=2048 + 64, n_batch=256) as big, model.new_context(n_ctx=256) as small:
            small.generate("warm up", max_tokens=2, temperature=0)

            def ingest() -> None:
                events["long_start"] = time.perf_counter()
                big.eval(long_prompt)
                events["long_end"] = time.perf_counter()

            worker = threading.Thread(target=ingest)
            worker.start()
            while "long_start" not in events:
                time.sleep(0.001)
            time.sleep(0.05)  # the long prompt is under way
            short_start = time.perf_counter()
            result = small.generate("Hello there", max_tokens=16, temperature=0)
            events["short_end"] = time.perf_counter()
            worker.join()
        assert len(result.tokens) == 16
        # Eight chunks of 256 tokens: the short job finished while the long one still had chunks to go.
        assert events["short_end"] < events["long_end"], events
        long_total = events["long_end"] - events["long_start"]
        assert events["short_end"] - short_start < 0.5 * long_total, (events, short_start)


def test_turn_lock_alternates_two_background_jobs() -> None:
    """Two threads each doing chunked long work take turns: neither waits for all of the other's."""
    from wasillama.shim.turns import TurnLock

    lock = TurnLock()
    order: list[str] = []
    both_waiting = threading.Event()

    def work(name: str) -> None:
        for k in range(8):
            with lock.background():
                order.append(name)
                if name == "a" and k == 0:
                    both_waiting.wait(10)  # b queues up during a's first chunk
                time.sleep(0.005)  # a chunk

    a = threading.Thread(target=work, args=("a",))
    a.start()
    while not order:
        time.sleep(0.001)
    b = threading.Thread(target=work, args=("b",))
    b.start()
    while lock._waiting_bg < 1:  # b is waiting for its turn
        time.sleep(0.001)
    both_waiting.set()
    a.join()
    b.join()
    assert sorted(order) == ["a"] * 8 + ["b"] * 8
    # from b's arrival on, while both have chunks left, turns alternate
    assert order[:4] == ["a", "b", "a", "b"], order
