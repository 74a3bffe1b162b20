"""The retrieval toolbox in a real run: with every switch of `evaluation.retrieval` and test-time
augmentation on, the extraction saves its whitening with the run, the submission ranks as
`phases.retrieval.retrieve` does with that whitening, and `pvs search` of a query image finds
what the submission lists for it; an altered whitening file is refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_yaml
from reliability.test_bad_input import accepted, refused
from test_run import pvs_run
from test_search import TINY_RUN, result_blocks

from phases.retrieval import RetrievalOptions, Whitening, retrieve
from phases.submission import read_submission, submission_id
from tfrecords.embeddings import load_embeddings

# Every switch at once, sized for the tiny data (a 16-d embedding, ~10 index items a split).
RETRIEVAL = {
    "whitening": {"dimensions": 8, "train_images": 24},
    "database_augmentation": {"neighbours": 2, "alpha": 3.0},
    "query_expansion": {"neighbours": 2, "alpha": 3.0},
    "reranking": {"k1": 2, "k2": 2, "lambda_value": 0.3, "candidates": 6},
}


@pytest.fixture(scope="module")
def run_dir(ingested, tmp_path_factory) -> Path:
    """A finished `pvs run` of the search tests' one-phase run with every retrieval switch on."""
    folder = tmp_path_factory.mktemp("retrieval-run")
    config = {**TINY_RUN, "data": {**TINY_RUN["data"], "source": str(ingested)},
              "evaluation": {**TINY_RUN["evaluation"], "test_time_augmentation": "flip", "retrieval": RETRIEVAL}}
    pvs_run(write_yaml(folder / "tiny.yaml", config), folder / "run")
    return folder / "run"


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.slow
def test_the_submission_ranks_as_retrieve_does_with_the_whitening_saved_with_the_run(run_dir):
    summary = summary_of(run_dir)
    whitening = Whitening.load(summary["whitening"], summary["whitening_sha256"])
    assert whitening.projection.shape[1] == RETRIEVAL["whitening"]["dimensions"]
    split = summary["final_split"]
    query = load_embeddings(summary["embeddings"], f"{split}_query")
    index = load_embeddings(summary["embeddings"], f"{split}_index")
    positions, _ = retrieve(query.vectors, index.vectors, RetrievalOptions.model_validate(RETRIEVAL), whitening,
                            min(10, len(index.vectors)))
    expected = {submission_id(image_id.decode()): [submission_id(index.image_ids[i].decode()) for i in row]
                for image_id, row in zip(query.image_ids, positions)}
    assert read_submission(run_dir / "submission.csv") == expected
    plain, _ = retrieve(query.vectors, index.vectors, RetrievalOptions(), None, min(10, len(index.vectors)))
    assert not np.array_equal(plain, positions), "the switches changed no ranking: the test would prove nothing"


@pytest.mark.slow
def test_pvs_search_of_a_query_image_lists_what_the_submission_lists_for_it(capsys, run_dir, demo_images):
    summary = summary_of(run_dir)
    query_ids = load_embeddings(summary["embeddings"], f"{summary['final_split']}_query").image_ids
    image_id = min(image_id.decode() for image_id in query_ids)
    printed = accepted(capsys, "search", "--run", run_dir, demo_images / image_id, "--top", 10)
    ((_, *lines),) = result_blocks(printed)
    found = [submission_id(line.split()[2]) for line in lines]
    assert found == read_submission(run_dir / "submission.csv")[submission_id(image_id)]


@pytest.mark.slow
def test_a_run_whose_whitening_was_altered_is_refused(capsys, run_dir, demo_images, tmp_path):
    summary = summary_of(run_dir)
    altered = tmp_path / "whitening.npz"
    shutil.copy(summary["whitening"], altered)
    with open(altered, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\0" * 8)
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("run-config.yaml", "submission.csv"):
        shutil.copy(run_dir / name, copy)
    shutil.copytree(run_dir / "data", copy / "data")
    (copy / "run.json").write_text(json.dumps({**summary, "whitening": str(altered)}))
    query = min(image_id.decode() for image_id in load_embeddings(
        summary["embeddings"], f"{summary['final_split']}_query").image_ids)
    message = refused(capsys, "search", "--run", copy, demo_images / query)
    assert str(altered) in message and "sha256" in message


def test_a_phase_learns_its_whitening_once_per_weights_and_again_when_they_change(ingested):
    """The last epoch's val and the final split are scored with the same weights: one learned
    whitening serves both; trained weights learn a new one, equal to `whitening_for`'s."""
    from test_pooling_and_views import tiny_model, tta_config

    from phases.scoring import WhiteningMemo, whitening_for

    model = tiny_model()
    config = tta_config(ingested, "none", {"whitening": {"dimensions": 3, "train_images": 10}})
    memo = WhiteningMemo()
    first = memo.whitening(model, config, ingested)
    assert memo.whitening(model, config, ingested) is first
    dense = model.layers[-1]
    dense.set_weights([weights + 0.5 for weights in dense.get_weights()])
    changed = memo.whitening(model, config, ingested)
    assert changed is not first and not np.allclose(changed.projection, first.projection)
    expected = whitening_for(model, config, ingested)
    np.testing.assert_allclose(changed.projection, expected.projection, atol=1e-6)
    np.testing.assert_allclose(changed.mean, expected.mean, atol=1e-6)
    assert WhiteningMemo().whitening(model, tta_config(ingested, "none"), ingested) is None
