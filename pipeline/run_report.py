"""What a `finetune` run shows as it goes and leaves at its end.

As it goes: a progress artifact (steps done of all), and after the baseline and every
phase RUN_DIR/scores.csv and its chart scores.png, with a table artifact of the phase's
scores. At the end: submission.csv, the chart and a search sheet (a few queries and their
nearest index images) as markdown artifacts, and RUN_DIR/run.json, the run's summary that
`pvs report`, `compare` and `search` read. Under a gs:// root each is pushed as written.
"""

import json
from pathlib import Path

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from phases.config import PipelineConfig
from pipeline.charts import write_score_chart
from pipeline.reports import artifact_key, chart_markdown
from pipeline.scores import ScoreTable
from pipeline.search_sheets import sheet_markdown, write_run_sheet
from pipeline.steps import Baseline, Extraction, IngestedData, ModelFile, PhaseOutput
from pipeline.storage import RunRoot
from tfrecords.files import sha256_file, write_bytes_atomic, write_text_atomic


class RunReport:
    """The reports of one run of `config` into `root`, which has `steps` steps."""

    def __init__(self, config: PipelineConfig, root: RunRoot, steps: int):
        self.config, self.root, self.steps, self.done = config, root, steps, 0
        self.name = (root.remote or str(root.local.resolve())).rsplit("/", 1)[-1]
        self.progress = create_progress_artifact(0.0, key=artifact_key(self.name, "progress"),
                                                 description=f"steps done of {steps}")
        self.table = ScoreTable(root.local / "scores.csv")
        self.chart = root.local / "scores.png"
        self.title = f"{config.description or self.name}: MAR@10 on {config.evaluation.split}"

    def step_done(self) -> None:
        self.done += 1
        update_progress_artifact(self.progress, 100 * self.done / self.steps)

    def baseline(self, baseline: Baseline) -> None:
        self.table.add(baseline.row)
        self.step_done()

    def phase(self, name: str, output: PhaseOutput) -> None:
        """A finished phase's rows added to scores.csv, the chart redrawn, both pushed."""
        rows = output.scored_rows(self.config.evaluation.final_split)
        for row in rows:
            self.table.add(row)
        write_score_chart(self.table.rows, self.chart, title=self.title)
        self.root.push(self.root.local, recursive=False)  # the scores so far
        create_table_artifact(rows, key=artifact_key(self.name, "scores", name), description=f"{name}: scores per epoch")
        self.step_done()

    def finish(self, data: IngestedData, final: ModelFile, extraction: Extraction) -> dict:
        """submission.csv, the artifacts and run.json; returns the run's summary: the paths
        (URLs for a gs:// root) of scores.csv, the chart, submission.csv, the embeddings,
        the final model and the search sheet, with the final split's scores."""
        local, root = self.root.local, self.root
        submission = local / "submission.csv"
        write_bytes_atomic(submission, extraction.submission.read_bytes())
        self.step_done()
        create_markdown_artifact(chart_markdown(self.title, self.chart, self.table.rows),
                                 key=artifact_key(self.name, "score-chart"),
                                 description="the leaderboard metric after each phase and epoch")
        sheet = write_run_sheet(local / "search-sheet.png", extraction, data.data_dir, self.config.evaluation.retrieval)
        create_markdown_artifact(sheet_markdown(f"{self.name}: similar items", sheet),
                                 key=artifact_key(self.name, "search-sheet"),
                                 description="a few queries and their nearest index images, by the final model")

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
            "search_sheet": where(sheet),
        }
        write_text_atomic(local / "run.json", json.dumps(summary, indent=1))
        root.push(local, recursive=False)
        return summary
