"""What a `finetune` run shows as it goes and leaves at its end.

The Prefect UI shows one artifact of the flow run itself, the run's report, created
first and updated after the baseline and after every scored epoch (so a run that crashes
leaves its journey so far): the progress, the score chart, the leaderboard and, at the
end, the verdict (`pipeline/verdict.py`) and the search sheet (a few queries and their
nearest index images). Each phase's score table is an artifact of its task run
(`pipeline/tasks.py`). Keys are the run folder's (`reports.run_key`: its name and a digest
of where it is), so two `runs/demo` folders never share one; each says which flow run
and attempt wrote it.

On disk: RUN_DIR/scores.csv and its chart scores.png, rewritten as the report is; at the
end submission.csv and RUN_DIR/run.json, the run's summary that `pvs report`, `compare`
and `search` read. Under a gs:// root each is pushed as written.
"""

import json
import logging
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from phases.config import PipelineConfig
from pipeline.charts import write_score_chart
from pipeline.flow_runs import attempt
from pipeline.reports import LEADERBOARD_COLUMNS, leaderboard, markdown_table, png_markdown, run_key
from pipeline.scores import ScoreTable
from pipeline.search_sheets import sheet_caption, write_run_sheet
from pipeline.steps import Baseline, Extraction, IngestedData, ModelFile, PhaseOutput
from pipeline.storage import RunRoot
from pipeline.tensorboard_logs import log_baseline, log_run_end
from pipeline.verdict import run_verdict
from tfrecords.files import sha256_file, write_bytes_atomic, write_text_atomic


class RunReport:
    """The reports of one run of `config` into `root`, which has `steps` steps."""

    def __init__(self, config: PipelineConfig, root: RunRoot, steps: int):
        self.config, self.root, self.steps, self.done = config, root, steps, 0
        self.name = (root.remote or str(root.local.resolve())).rsplit("/", 1)[-1]
        self.key = run_key(root)
        self.table = ScoreTable(root.local / "scores.csv")
        self.chart = root.local / "scores.png"
        self.title = f"{config.description or self.name}: MAR@10 on {config.evaluation.split}"
        self.status, self.in_step, self.verdict, self.sheet = "starting", 0.0, [], None
        self.written_by = attempt()
        self.artifact = create_markdown_artifact(
            self.markdown(), key=f"{self.key}-score-chart",
            description=f"{root.identity}: progress, MAR@10 after each phase and epoch, the verdict"
                        + (f" ({self.written_by})" if self.written_by else ""))

    @property
    def progress(self) -> float:
        """Percent done: finished steps, and the running phase's share of its epochs."""
        return 100 * min(1.0, (self.done + self.in_step) / self.steps)

    def step_done(self, status: str) -> None:
        self.done, self.in_step, self.status = self.done + 1, 0.0, status
        self._update()

    def baseline(self, baseline: Baseline) -> None:
        self.table.add(baseline.row)
        log_baseline(self.root, self.config, baseline.row)
        self._redraw()
        self.step_done(f"baseline scored ({baseline.row['mar_at_10']:.4f})")

    def epoch(self, phase: str, row: dict) -> None:
        """A phase's scored epoch (called from its task as it trains): the table, chart and report."""
        epochs = self.config.phase(phase).epochs
        self.table.add(row)
        self._redraw()
        self.in_step, self.status = min(1.0, int(row["epoch"]) / epochs), f"{phase}: epoch {row['epoch']} of {epochs} scored"
        self._update()

    def phase(self, name: str, output: PhaseOutput) -> None:
        """A finished phase's rows (the last with the final split's scores) in scores.csv and the chart."""
        for row in output.scored_rows(self.config.evaluation.final_split):
            self.table.add(row)
        self._redraw()
        self.step_done(f"{name} finished")

    def finish(self, data: IngestedData, final: ModelFile, extraction: Extraction) -> dict:
        """submission.csv, the verdict, the search sheet and run.json; returns the run's summary:
        the paths (URLs for a gs:// root) of scores.csv, the chart, submission.csv, the
        embeddings, the final model and the search sheet, with the final split's scores and
        the verdict's lines."""
        local, root = self.root.local, self.root
        submission = local / "submission.csv"
        write_bytes_atomic(submission, extraction.submission.read_bytes())
        self.verdict = run_verdict(self.table.rows, extraction.split, extraction.scores, self.config.evaluation.split)
        self.sheet = write_run_sheet(local / "search-sheet.png", extraction, data.data_dir, self.config.evaluation.retrieval)
        log_run_end(root, self.config, {"search_sheet": self.sheet, "score_chart": self.chart})
        self.step_done(f"finished: submission.csv, {extraction.split} mar_at_10 {extraction.scores['mar_at_10']:.4f}")

        def where(path: Path) -> str:  # paths of a local root; URLs of a gs:// one
            return root.show(Path(path)) if root.remote else str(Path(path).resolve())

        summary = {
            "run_dir": root.identity,
            "scores": where(self.table.path),
            "chart": where(self.chart),
            "submission": where(submission),
            "submission_sha256": sha256_file(submission),
            "embeddings": where(extraction.embeddings),
            "final_model": where(final.path),
            "final_model_sha256": final.sha256,
            "final_split": extraction.split,
            "whitening": None if extraction.whitening is None else where(extraction.whitening),
            "whitening_sha256": extraction.whitening_sha256,
            "final_scores": extraction.scores,
            "search_sheet": where(self.sheet),
            "verdict": self.verdict,
        }
        write_text_atomic(local / "run.json", json.dumps(summary, indent=1))
        root.push(local, recursive=False)
        return summary

    def log_verdict(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        for line in self.verdict:
            if line.startswith("WARNING: "):
                logger.warning(line.removeprefix("WARNING: "))
            else:
                logger.info(line)

    def markdown(self) -> str:
        """The report: title, progress, chart, verdict, leaderboard, search sheet."""
        parts = [f"# {self.title}", f"**{self.progress:.0f}%** of {self.steps} steps: {self.status}"
                 + (f" · {self.written_by}" if self.written_by else "")]
        if self.table.rows and self.chart.is_file():
            parts.append(png_markdown("score chart", self.chart))
        if self.verdict:
            parts.append("\n".join(f"- {line}" for line in self.verdict))
        if self.table.rows:
            parts.append(markdown_table(leaderboard(self.table.rows), list(LEADERBOARD_COLUMNS)))
        if self.sheet is not None:
            parts += ["## Similar items", png_markdown("search sheet", self.sheet), sheet_caption()]
        return "\n\n".join(parts) + "\n"

    def _redraw(self) -> None:
        write_score_chart(self.table.rows, self.chart, title=self.title)
        self.root.push(self.root.local, recursive=False)  # the scores so far

    def _update(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(self.artifact, ArtifactUpdate(data=self.markdown()))
