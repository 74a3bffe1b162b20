"""The few lines a run ends with: did training make retrieval better? For the demo config:

    val mar_at_10: baseline 0.2702 -> final 0.5009 (+0.2307; noise about ±0.065 with 228 queries)
    test mar_at_10: baseline 0.5119 -> final 0.7966 (+0.2847; noise about ±0.125 with 59 queries)
    best epoch: siamese 3 (0.5351), 0.0342 above the final one (within the noise)

and a warning when the final score is below the baseline, or when the change is within
the noise of the number of queries. The noise is two standard errors of a mean of values
in [0, 1]: 2 * sqrt(p (1 - p) / n), with p about the mean of both scores and n the queries. It
is an upper bound for MAR@10 (each query's recall lies in [0, 1]); a difference between
two models on the same queries is usually less noisy, so "within the noise" means "not
shown by this split", not "no change".
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

METRIC = "mar_at_10"


@dataclass(frozen=True)
class Change:
    """One split's score before training and after, with `queries` queries (0: not recorded,
    as in runs made before scores.csv counted them: no noise is stated)."""

    split: str
    baseline: float
    final: float
    queries: int

    @property
    def noise(self) -> float:
        """Two standard errors of a mean over `queries` values in [0, 1] (see the module), with
        Agresti and Coull's p = (successes + 2) / (n + 4), so that scores of 0 or 1 from a few
        queries are not taken for certain."""
        n = max(self.queries, 1)
        p = ((self.baseline + self.final) / 2 * n + 2) / (n + 4)
        return 2 * math.sqrt(p * (1 - p) / n)

    @property
    def delta(self) -> float:
        return self.final - self.baseline

    def line(self) -> str:
        noise = f"; noise about ±{self.noise:.3f} with {self.queries} queries" if self.queries else ""
        return f"{self.split} {METRIC}: baseline {self.baseline:.4f} -> final {self.final:.4f} ({self.delta:+.4f}{noise})"

    def warning(self) -> str | None:
        if self.final < self.baseline - (self.noise if self.queries else 0.0):
            return (f"WARNING: the final {self.split} score is below the untrained model's: training made retrieval "
                    "worse (compare the phases in scores.csv; a learning rate too high, or too few images)")
        if self.queries and abs(self.delta) <= self.noise:
            return (f"WARNING: the {self.split} change ({self.delta:+.4f}) is within the noise of {self.queries} "
                    "queries: this split cannot tell the final model from the untrained one (more queries, or more "
                    "epochs)")
        return None


def run_verdict(rows: list[dict], final_split: str, final_scores: dict | None = None, split: str = "val") -> list[str]:
    """The verdict on a run's score rows (scores.csv, baseline first): the change on `split`
    (each row's own scores) and on `final_split` (the baseline's `test_*` columns against
    `final_scores`, the submission's, or else the last row's), the best epoch against the
    final one, and warnings. [] without a baseline row or trained rows."""
    baseline = next((row for row in rows if row.get("phase") == "baseline"), None)
    trained = [row for row in rows if row.get("phase") != "baseline" and _number(row.get(METRIC)) is not None]
    if baseline is None or not trained or _number(baseline.get(METRIC)) is None:
        return []
    final = trained[-1]
    changes = [Change(split, float(baseline[METRIC]), float(final[METRIC]), int(_number(final.get("n_queries")) or 0))]
    test = _final_split_change(baseline, final, final_split, final_scores)
    if test is not None and final_split != split:
        changes.append(test)
    lines = [change.line() for change in changes]
    lines.append(_best_epoch(trained, changes[0]))
    lines += [warning for change in changes if (warning := change.warning())]
    return lines


def _final_split_change(baseline: dict, final: dict, final_split: str, final_scores: dict | None) -> Change | None:
    before = _number(baseline.get(f"{final_split}_{METRIC}"))
    if final_scores and _number(final_scores.get(METRIC)) is not None:
        after, queries = float(final_scores[METRIC]), final_scores.get("n_queries")
    else:
        after, queries = _number(final.get(f"{final_split}_{METRIC}")), final.get(f"{final_split}_n_queries")
    if before is None or after is None:
        return None
    return Change(final_split, float(before), float(after), int(_number(queries) or _number(baseline.get(f"{final_split}_n_queries")) or 0))


def _best_epoch(trained: list[dict], change: Change) -> str:
    best = max(reversed(trained), key=lambda row: float(row[METRIC]))  # of equal scores, the latest
    final = trained[-1]
    where = f"{best['phase']} {best['epoch']} ({float(best[METRIC]):.4f})"
    if best is final:
        return f"best epoch: {where}, the final one"
    gap = float(best[METRIC]) - float(final[METRIC])
    judged = "within the noise" if gap <= change.noise else "more than the noise: fewer epochs, or a lower learning rate"
    return f"best epoch: {where}, {gap:.4f} above the final one ({judged})"


def _number(value) -> float | None:
    """A score as a float: numbers, and numbers read back as text from scores.csv; else None."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def recorded_verdict(run_dir: Path, rows: list[dict]) -> list[str]:
    """The verdict of a run folder's scores.csv `rows`, with the final split's scores from its
    run.json when the run finished (`pvs report`)."""
    try:
        summary = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    final_scores = summary.get("final_scores") if isinstance(summary.get("final_scores"), dict) else None
    return run_verdict(rows, summary.get("final_split") or "test", final_scores)
