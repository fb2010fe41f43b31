"""The benchmark scripts' interleaved rounds: every variant once per round, a failing kernel reported, not hidden."""
from qat.base.timing import OPENMP_SETTINGS, Timed, interleaved_rounds, openmp_settings


def test_interleaved_rounds_time_every_variant_per_round_and_report_failures() -> None:
    order: list[str] = []

    def fails() -> None:
        raise RuntimeError("RuntimeError: no kernel for this CPU\nmore detail")

    timed = interleaved_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b"), "bad": fails},
                               rounds=3, warmup=1, repeats=2)
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3   # interleaved per round
    assert len(timed["a"].rounds) == 3 and timed["a"].seconds >= 0 and not timed["a"].error
    assert timed["bad"].error == "RuntimeError: no kernel for this CPU" and timed["bad"].rounds == []


def test_speedup_is_the_median_of_per_round_ratios() -> None:
    fast, slow = Timed([1.0, 2.0, 1.0]), Timed([1.5, 3.0, 2.0])   # round 2 ran slow for both: its ratio is still 1.5
    speedup = fast.speedup_over(slow)
    assert (speedup.median, speedup.low, speedup.high) == (1.5, 1.5, 2.0)


def test_openmp_settings_record_what_the_process_started_with(monkeypatch) -> None:
    for name in OPENMP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_PROC_BIND", "close")
    monkeypatch.setenv("UNRELATED", "x")
    assert openmp_settings() == {"OMP_PROC_BIND": "close"}
