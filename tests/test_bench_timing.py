"""apb_ref.bench's interleaved timing: who runs when, and how same-round ratios are taken (no timing asserts)."""
import pytest

from apb_ref.bench import measure_interleaved, speedup


def test_interleaved_runs_every_callable_in_rotating_turns():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or name.upper()) for name in "abc"}
    stats, results = measure_interleaved(fns, repeats=6, min_time=0.0, rounds=3)
    assert results == {"a": "A", "b": "B", "c": "C"}  # the warm-up's results
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each
    # then 3 rounds of blocks of ceil(6 / 3) = 2 calls, the order rotating by one each round
    assert calls[3:] == list("aabbcc") + list("bbccaa") + list("ccaabb")
    for s in stats.values():
        assert s["repeats"] == 6 and len(s["round_medians"]) == 3
        assert s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]


def test_speedup_takes_the_median_of_same_round_ratios():
    slow = {"median_s": 2.0, "round_medians": [2.0, 4.0, 2.0]}  # round 2 was a slow spell for both
    fast = {"median_s": 1.0, "round_medians": [1.0, 2.0, 1.0]}
    assert speedup(slow, fast) == pytest.approx(2.0)
    drift = {"median_s": 3.0, "round_medians": [3.0, 1.0, 3.0]}
    assert speedup(drift, fast) == pytest.approx(3.0)  # median of 3, 0.5, 3
    # Without rounds (or from different runs) it falls back to the ratio of medians.
    assert speedup({"median_s": 3.0}, fast) == pytest.approx(3.0)
    assert speedup(slow, {"median_s": 0.5, "round_medians": [0.5]}) == pytest.approx(4.0)
