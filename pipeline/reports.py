"""Reading runs back: the leaderboard table (one row per phase) and the flow's
artifacts in the Prefect UI (a score table per phase, the chart per run, progress).
"""

import base64
import csv
import hashlib
import re
from pathlib import Path

from pipeline.run_root import run_command
from pipeline.storage.remote import is_remote
from tfrecords.errors import UserError

METRIC = "mar_at_10"  # the leaderboard metric of eProduct
LEADERBOARD_COLUMNS = ("phase", "epochs", "best_epoch", f"best_{METRIC}", f"final_{METRIC}", f"test_{METRIC}")


def read_scores(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/scores.csv, numbers as numbers. A damaged file (cut short,
    edited, not UTF-8) is a UserError naming the line and the command that rewrites it."""
    path = Path(run_dir) / "scores.csv"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such folder; give a run folder written by `pvs run` (e.g. runs/demo)")
    if not path.is_file():
        raise UserError(f"{path}: no such file; is {run_dir} a run folder (written by `pvs run`)?")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: as a spreadsheet may save it
            header, *lines = list(csv.reader(handle)) or [[]]
        lines = [(number, line) for number, line in enumerate(lines, start=2) if line]  # blank lines are no rows
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start})"
    except csv.Error as error:
        problem = f"not CSV ({error})"
    else:
        problem = _scores_problem(header, lines)
    if problem:
        raise UserError(f"{path}: {problem}, so the file is damaged (cut short or edited); "
                        f"{run_command(run_dir)} rewrites it from the run's records, keeping every finished step")
    return [{key: _number(value) for key, value in zip(header, line)} for _, line in lines]


def _scores_problem(header: list[str], lines: list[tuple[int, list[str]]]) -> str | None:
    """What makes scores.csv's (line number, fields) unusable, naming the first bad line;
    None when nothing does."""
    if not header:
        return "it is empty"
    missing = [column for column in ("phase", "epoch", METRIC) if column not in header]
    if missing:
        return f"line 1 lacks the column(s) {', '.join(missing)}"
    if not lines:
        return "it holds no scores"
    for number, line in lines:
        if len(line) != len(header):
            return f"line {number} has {len(line)} fields, the header {len(header)}"
        value = line[header.index(METRIC)]
        if not isinstance(_number(value), (int, float)):
            return f"line {number}: {METRIC} {value!r} is not a number"
    return None


def run_names(run_dirs: list[Path | str]) -> list[str]:
    """A name per run: its folder's name (a gs:// URL's last part), or the path as given when
    two folders share a name."""
    names = []
    for run_dir in run_dirs:
        text = str(run_dir)
        name = text.rstrip("/").rsplit("/", 1)[-1] if is_remote(text) else Path(run_dir).resolve().name
        names.append(name if name not in names else str(run_dir))
    return names


def phase_order(runs: list[list[dict]]) -> list[str]:
    """The phases of several runs' score rows in one order that keeps each run's own: a
    phase only one run has goes after the phase it follows there (top, block7a, full),
    not at the end."""
    merged = []
    for rows in runs:
        position = 0
        for phase in dict.fromkeys(row["phase"] for row in rows):
            if phase in merged:
                position = merged.index(phase) + 1
            else:
                merged.insert(position, phase)
                position += 1
    return merged


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def leaderboard(rows: list[dict]) -> list[dict]:
    """One row per phase, in run order: its best epoch by the leaderboard metric, the
    metric then and at its last epoch, and the test score measured at the phase's end."""
    table = []
    for phase in dict.fromkeys(row["phase"] for row in rows):
        epochs = [row for row in rows if row["phase"] == phase]
        best = max(epochs, key=lambda row: row[METRIC])
        table.append({
            "phase": phase,
            "epochs": len(epochs) if phase != "baseline" else 0,
            "best_epoch": best["epoch"],
            f"best_{METRIC}": best[METRIC],
            f"final_{METRIC}": epochs[-1][METRIC],
            f"test_{METRIC}": epochs[-1].get(f"test_{METRIC}", ""),
        })
    return table


def render_leaderboard(name: str, table: list[dict]) -> str:
    lines = [name, "".join(f"{column:>16}" if i else f"{column:<12}" for i, column in enumerate(LEADERBOARD_COLUMNS))]
    for row in table:
        cells = []
        for i, column in enumerate(LEADERBOARD_COLUMNS):
            value = row[column]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            cells.append(f"{text:>16}" if i else f"{text:<12}")
        lines.append("".join(cells))
    return "\n".join(lines)


PHASE_TABLE = ("phase", "epoch", "loss", METRIC, "map_at_10", "recall_at_1", "recall_at_10", "map_at_r", f"test_{METRIC}",
               "train_seconds")


def phase_table(rows: list[dict]) -> list[dict]:
    """A phase's score rows for its table artifact: the columns that fit a screen (scores.csv
    has them all), numbers to 4 digits."""
    columns = [column for column in PHASE_TABLE if any(column in row for row in rows)]
    return [{column: _rounded(row.get(column, "")) for column in columns} for row in rows]


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def run_key(root) -> str:
    """The start of a run's artifact keys: its folder's name and 8 hex digits of where it is
    (the absolute path, or the gs:// URL), e.g. `demo-1a2b3c4d`: two folders named `demo`
    get two keys, and every run of one folder the same (the UI keeps each key's versions)."""
    name = root.identity.rstrip("/").rsplit("/", 1)[-1]
    return artifact_key(name, hashlib.sha256(root.identity.encode()).hexdigest()[:8])


def png_markdown(alt: str, png: Path) -> str:
    """A markdown image of a PNG file, embedded as a data URI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(Path(png).read_bytes()).decode('ascii')})"
