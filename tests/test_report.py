"""`pvs report`: the leaderboard of runs (one row per phase, best epoch and final) and their chart."""

from pipeline.cli import main
from pipeline.scores import ScoreTable


def write_run(folder, journey):
    """A run folder whose scores.csv holds `journey`: [(phase, epoch, mar_at_10, test_mar_at_10 or None)]."""
    table = ScoreTable(folder / "scores.csv")
    folder.mkdir(parents=True)
    for phase, epoch, mar, test in journey:
        row = {"phase": phase, "epoch": epoch, "loss": "" if phase == "baseline" else 1.0 / (epoch + 1), "mar_at_10": mar}
        if test is not None:
            row["test_mar_at_10"] = test
        table.add(row)
    return folder


SEED_JOURNEY = [("baseline", 0, 0.342, None), ("top", 1, 0.342, 0.340), ("block7a", 1, 0.371, 0.365),
                ("full", 1, 0.402, None), ("full", 2, 0.441, None), ("full", 3, 0.433, 0.430),
                ("siamese", 1, 0.455, None), ("siamese", 2, 0.463, 0.458)]


def test_report_prints_best_and_final_epoch_per_phase_and_writes_the_chart(tmp_path, capsys):
    run = write_run(tmp_path / "seed", SEED_JOURNEY)
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in printed.splitlines()[2:7]}  # the five phases
    assert lines["full"] == ["full", "3", "2", "0.4410", "0.4330", "0.4300"]  # best epoch 2, final epoch 3
    assert lines["siamese"] == ["siamese", "2", "2", "0.4630", "0.4630", "0.4580"]
    assert lines["baseline"][:5] == ["baseline", "0", "0", "0.3420", "0.3420"]
    # The verdict: scores.csv without query counts (an older run) states the change without its noise.
    assert "val mar_at_10: baseline 0.3420 -> final 0.4630 (+0.1210)" in printed
    assert "best epoch: siamese 2 (0.4630), the final one" in printed
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_puts_several_runs_side_by_side(tmp_path, capsys):
    first = write_run(tmp_path / "seed", SEED_JOURNEY)
    second = write_run(tmp_path / "no-block7a", [row for row in SEED_JOURNEY if row[0] != "block7a"])
    chart = tmp_path / "comparison.png"
    assert main(["report", str(first), str(second), "--chart", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("seed") < printed.index("no-block7a") and f"chart: {chart}" in printed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_folder_without_scores_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "scores.csv: no such file" in capsys.readouterr().err
