"""The score journey chart: the leaderboard metric after each phase and epoch, as in the seed."""

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from tfrecords.files import write_bytes_atomic  # noqa: E402


def write_score_chart(rows: list[dict], out_path: Path, metric: str = "mar_at_10", title: str = "") -> Path:
    """One point per scored (phase, epoch) in run order, coloured by phase, labelled with its value."""
    figure, axis = plt.subplots(figsize=(max(5.0, 0.55 * len(rows) + 2), 3.6))
    phases = list(dict.fromkeys(row["phase"] for row in rows))
    colours = plt.get_cmap("tab10")
    for number, phase in enumerate(phases):
        positions = [i for i, row in enumerate(rows) if row["phase"] == phase]
        _labelled_line(axis, positions, [float(rows[i][metric]) for i in positions], phase, colours(number % 10))
    axis.set_xticks(range(len(rows)), [f"{row['phase']}\n{row['epoch']}" for row in rows], fontsize=7)
    _finish(axis, metric, max(float(row[metric]) for row in rows), title or f"{metric} after each phase and epoch")
    return save_figure(figure, out_path)


def write_comparison_chart(runs: dict[str, list[dict]], out_path: Path, metric: str = "mar_at_10") -> Path:
    """Several runs side by side: per run, the metric after each phase (its last epoch)."""
    phases = list(dict.fromkeys(row["phase"] for rows in runs.values() for row in rows))
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(phases) + 2), 3.6))
    colours = plt.get_cmap("tab10")
    for number, (name, rows) in enumerate(runs.items()):
        final = {row["phase"]: float(row[metric]) for row in rows}  # later rows win: the phase's last epoch
        positions = [i for i, phase in enumerate(phases) if phase in final]
        colour = colours(number % 10)
        _labelled_line(axis, positions, [final[phases[i]] for i in positions], name, colour, label_colour=colour)
    axis.set_xticks(range(len(phases)), phases, fontsize=8)
    top = max((float(row[metric]) for rows in runs.values() for row in rows), default=0.0)
    _finish(axis, metric, top, f"{metric} at the end of each phase")
    return save_figure(figure, out_path)


def _labelled_line(axis, positions: list[int], values: list[float], label: str, colour, label_colour=None) -> None:
    """A line of points, each labelled with its value (in `label_colour`, default black)."""
    axis.plot(positions, values, "o-", color=colour, label=label)
    for position, value in zip(positions, values):
        axis.annotate(f"{value:.3f}", (position, value), textcoords="offset points", xytext=(0, 6), ha="center",
                      fontsize=7, color=label_colour)


def _finish(axis, metric: str, top: float, title: str) -> None:
    axis.set_ylabel(metric)
    axis.set_ylim(0, min(1.0, top * 1.2) if top > 0 else 1.0)  # from 0: small moves stay small
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def save_figure(figure, out_path: str | Path) -> Path:
    """Write a Matplotlib figure as a PNG atomically and close it."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(out_path, buffer.getvalue())
    return Path(out_path)
