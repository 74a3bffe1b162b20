"""The verdict a run ends with, the keys and tables of its artifacts, and its chart's test line."""

import matplotlib.pyplot as plt
import pytest

from pipeline.charts import score_chart
from pipeline.reports import phase_table, run_key
from pipeline.storage import RunRoot
from pipeline.verdict import Change, run_verdict


def rows(baseline: float, *trained: float, queries: int = 228, test: tuple[float, float] | None = None) -> list[dict]:
    """scores.csv rows: a baseline, then one epoch of phase `p1`, `p2`, ... per trained score."""
    table = [{"phase": "baseline", "epoch": 0, "mar_at_10": baseline, "n_queries": queries}]
    table += [{"phase": f"p{i}", "epoch": 1, "mar_at_10": score, "n_queries": queries} for i, score in enumerate(trained, 1)]
    if test:
        table[0]["test_mar_at_10"], table[-1]["test_mar_at_10"] = test
        table[0]["test_n_queries"] = table[-1]["test_n_queries"] = queries
    return table


def test_a_clear_improvement_is_stated_on_val_and_test_without_a_warning():
    verdict = run_verdict(rows(0.27, 0.41, 0.50, test=(0.31, 0.80)), "test")
    assert verdict[0] == "val mar_at_10: baseline 0.2700 -> final 0.5000 (+0.2300; noise about ±0.065 with 228 queries)"
    assert verdict[1].startswith("test mar_at_10: baseline 0.3100 -> final 0.8000 (+0.4900;")
    assert verdict[2] == "best epoch: p2 1 (0.5000), the final one"
    assert not [line for line in verdict if line.startswith("WARNING")]


def test_a_final_score_below_the_baseline_is_a_warning():
    verdict = run_verdict(rows(0.40, 0.45, 0.20), "test")
    assert verdict[-1].startswith("WARNING: the final val score is below the untrained model's")
    assert verdict[1] == "best epoch: p1 1 (0.4500), 0.2500 above the final one (more than the noise: fewer epochs, or a lower learning rate)"


def test_a_change_within_the_noise_of_few_queries_is_a_warning():
    verdict = run_verdict(rows(0.50, 0.60, queries=12), "test")
    assert verdict[-1].startswith("WARNING: the val change (+0.1000) is within the noise of 12 queries")
    assert not [line for line in run_verdict(rows(0.50, 0.60, queries=2000), "test") if line.startswith("WARNING")]


def test_the_noise_of_a_perfect_score_on_few_queries_is_not_zero():
    assert Change("val", 1.0, 1.0, 2).noise > 0.5 and Change("val", 0.5, 0.5, 10_000).noise == pytest.approx(0.01, abs=1e-3)


def test_the_submissions_scores_are_the_final_test_score():
    verdict = run_verdict(rows(0.27, 0.50, test=(0.31, 0.79)), "test", {"mar_at_10": 0.81, "n_queries": 300})
    assert verdict[1].startswith("test mar_at_10: baseline 0.3100 -> final 0.8100 (+0.5000;") and "300 queries" in verdict[1]


def test_no_verdict_without_a_baseline_or_training():
    assert run_verdict(rows(0.3), "test") == [] and run_verdict(rows(0.3, 0.4)[1:], "test") == []


def test_two_run_folders_of_one_name_have_their_own_artifact_keys(tmp_path):
    here, there = RunRoot(tmp_path / "a" / "demo"), RunRoot(tmp_path / "b" / "demo")
    assert run_key(here).startswith("demo-") and run_key(here) != run_key(there)
    assert run_key(here) == run_key(RunRoot(tmp_path / "a" / "demo"))  # every run of one folder: the same key


def test_phase_tables_round_to_four_digits_and_keep_the_columns_that_fit():
    table = phase_table([{"phase": "full", "epoch": 1, "loss": 2.123456789, "mar_at_10": 0.41234567, "map_at_10": 0.2,
                          "precision_at_1": 0.3, "triplet_accuracy": 0.9, "test_mar_at_10": 0.79876543}])
    assert table == [{"phase": "full", "epoch": 1, "loss": 2.1235, "mar_at_10": 0.4123, "map_at_10": 0.2,
                      "test_mar_at_10": 0.7988}]


def test_the_score_chart_draws_the_test_score_where_it_was_measured():
    figure = score_chart(rows(0.27, 0.41, 0.50, test=(0.31, 0.80)))
    try:
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
        test = lines["test mar_at_10"]
        assert list(test.get_xdata()) == [0, 2] and list(test.get_ydata()) == [0.31, 0.80]
    finally:
        plt.close(figure)
