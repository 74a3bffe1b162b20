"""The score journey chart: the leaderboard metric after each phase and epoch, as in the seed."""

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.reports import phase_order
from tfrecords.files import write_bytes_atomic  # noqa: E402


def write_score_chart(rows: list[dict], out_path: Path, metric: str = "mar_at_10", title: str = "") -> Path:
    """`score_chart` written as a PNG."""
    return save_figure(score_chart(rows, metric, title), out_path)


def score_chart(rows: list[dict], metric: str = "mar_at_10", title: str = ""):
    """One point per scored (phase, epoch) in run order, coloured by phase, labelled with its
    value; and, where measured (the baseline, each phase's last epoch), the final split's
    score as black diamonds on a dashed line. Returns the Matplotlib figure."""
    figure, axis = plt.subplots(figsize=(max(5.0, 0.55 * len(rows) + 2), 3.6))
    phases = list(dict.fromkeys(row["phase"] for row in rows))
    colours = plt.get_cmap("tab10")
    for number, phase in enumerate(phases):
        positions = [i for i, row in enumerate(rows) if row["phase"] == phase]
        _labelled_line(axis, positions, [float(rows[i][metric]) for i in positions], phase, colours(number % 10))
    tests = [(i, float(row[f"test_{metric}"])) for i, row in enumerate(rows) if _is_number(row.get(f"test_{metric}"))]
    if tests:  # measured once per phase, at its end (and for the baseline)
        axis.plot([i for i, _ in tests], [value for _, value in tests], "D--", color="black", markersize=5,
                  linewidth=0.8, label=f"test {metric}")
        for i, value in tests:
            axis.annotate(f"{value:.3f}", (i, value), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7)
    axis.set_xticks(range(len(rows)), [f"{row['phase']}\n{row['epoch']}" for row in rows], fontsize=7)
    top = max([float(row[metric]) for row in rows] + [value for _, value in tests])
    _finish(axis, metric, top, title or f"{metric} after each phase and epoch")
    return figure


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_comparison_chart(runs: dict[str, list[dict]], out_path: Path, metric: str = "mar_at_10",
                           sizes: dict[str, tuple[float, float]] | None = None) -> Path:
    """Several runs side by side: per run, the metric after each phase (its last epoch).
    With `sizes` ({run: (final model MB, final test metric)}), a second panel plots each
    run's test score against its model size, as MILDNet compared its models."""
    phases = phase_order(list(runs.values()))
    width = max(5.0, 1.1 * len(phases) + 2)
    figure, axes = plt.subplots(1, 2 if sizes else 1, figsize=(width + (4.5 if sizes else 0), 3.6), squeeze=False)
    axis = axes[0][0]
    colours = plt.get_cmap("tab10")
    for number, (name, rows) in enumerate(runs.items()):
        final = {row["phase"]: float(row[metric]) for row in rows}  # later rows win: the phase's last epoch
        positions = [i for i, phase in enumerate(phases) if phase in final]
        colour = colours(number % 10)
        _labelled_line(axis, positions, [final[phases[i]] for i in positions], name, colour, label_colour=colour)
    axis.set_xticks(range(len(phases)), phases, fontsize=8)
    top = max((float(row[metric]) for rows in runs.values() for row in rows), default=0.0)
    _finish(axis, metric, top, f"{metric} at the end of each phase")
    if sizes:
        _size_panel(axes[0][1], sizes, {name: colours(number % 10) for number, name in enumerate(runs)}, metric)
    return save_figure(figure, out_path)


def _size_panel(axis, sizes: dict[str, tuple[float, float]], colours: dict, metric: str) -> None:
    """Each run's final test score against its model size, labelled with the run's name."""
    for name, (megabytes, score) in sizes.items():
        axis.scatter([megabytes], [score], color=colours[name])
        axis.annotate(name, (megabytes, score), textcoords="offset points", xytext=(5, 5), fontsize=7, color=colours[name])
    axis.set_xlim(0, max(megabytes for megabytes, _ in sizes.values()) * 1.3)  # from 0, with room for the labels
    _y_from_zero(axis, max(score for _, score in sizes.values()))
    axis.set_xlabel("final model (MB)")
    axis.set_ylabel(f"test {metric}")
    axis.set_title(f"final test {metric} against model size", fontsize=9)
    axis.grid(alpha=0.3)


def _labelled_line(axis, positions: list[int], values: list[float], label: str, colour, label_colour=None) -> None:
    """A line of points, each labelled with its value (in `label_colour`, default black)."""
    axis.plot(positions, values, "o-", color=colour, label=label)
    for position, value in zip(positions, values):
        axis.annotate(f"{value:.3f}", (position, value), textcoords="offset points", xytext=(0, 6), ha="center",
                      fontsize=7, color=label_colour)


def _finish(axis, metric: str, top: float, title: str) -> None:
    axis.set_ylabel(metric)
    _y_from_zero(axis, top)
    width = int(axis.get_position().width * axis.figure.get_figwidth() * 14)  # characters of 9 pt over the axis
    axis.set_title(textwrap.fill(title, max(40, width)), fontsize=9)  # a config's long description wrapped, not cut
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def _y_from_zero(axis, top: float) -> None:
    axis.set_ylim(0, min(1.1, top * 1.2) if top > 0 else 1.0)  # from 0: small moves stay small; room for labels


def save_figure(figure, out_path: str | Path) -> Path:
    """Write a Matplotlib figure as a PNG atomically and close it."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(out_path, buffer.getvalue())
    return Path(out_path)
