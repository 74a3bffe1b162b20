"""`scores.csv`: one row per scored phase and epoch, and the table printed at the end of a run."""

import csv
import io
from pathlib import Path

from phases.metrics import SCORE_NAMES
from tfrecords.files import write_text_atomic

FIRST_COLUMNS = ("phase", "epoch", "loss", *SCORE_NAMES)
PRINTED = ("phase", "epoch", "loss", "mar_at_10", "map_at_10", "recall_at_1", "recall_at_10", "map_at_r")


class ScoreTable:
    """Rows in the order they were scored; rewritten atomically after every change."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def add(self, row: dict) -> None:
        """Add a row, replacing the row of the same phase and epoch if there is one."""
        self.rows = [old for old in self.rows if (old["phase"], old["epoch"]) != (row["phase"], row["epoch"])]
        self.rows.append(row)
        self.write()

    def columns(self) -> list[str]:
        names = list(FIRST_COLUMNS)
        for row in self.rows:
            names += [key for key in row if key not in names]
        return names

    def write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())

    def render(self) -> str:
        """A fixed-width text table of the main columns."""
        lines = ["".join(f"{name:>13}" if i else f"{name:<10}" for i, name in enumerate(PRINTED))]
        for row in self.rows:
            cells = []
            for i, name in enumerate(PRINTED):
                value = row.get(name, "")
                text = f"{value:.4f}" if isinstance(value, float) else str(value)
                cells.append(f"{text:>13}" if i else f"{text:<10}")
            lines.append("".join(cells))
        return "\n".join(lines)


def phase_rows(rows: list[dict], final_scores: dict | None, final_split: str) -> list[dict]:
    """A finished phase's score rows, its last one extended with the scores of the final
    split (`test_mar_at_10`, ...), measured once at the end of the phase."""
    rows = [dict(row) for row in rows]
    if final_scores and rows:
        prefix = f"{final_split}_"
        rows[-1].update({(key if key.startswith(prefix) else prefix + key): value for key, value in final_scores.items()})
    return rows
