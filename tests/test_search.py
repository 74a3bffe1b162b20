"""`pvs search`: a run's final model finds the index items most similar to images, prints
them and draws them on a contact sheet; runs that cannot be searched are one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from conftest import tiny_pipeline, write_yaml
from reliability.test_bad_input import accepted, refused
from reliability.test_security import model_with_code
from test_run import pvs_run

from pipeline.cli import main
from pipeline.sheets import CELL_HEIGHT, CELL_WIDTH, COLOURS, GAP, OUTLINE, sheet_size
from tfrecords.embeddings import EmbeddingWriter, load_embeddings
from tfrecords.files import sha256_file

# One Siamese phase of one epoch at 32 px (on its own, it starts from the untrained
# backbone): the cheapest run with a real embedder.keras; eager, as tiny runs should be.
TINY_RUN = tiny_pipeline("SOURCE", {
    "description": "search test",
    "phases": [{"name": "siamese", "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}]}],
}, phases=("siamese",))


@pytest.fixture(scope="module")
def run_dir(ingested, tmp_path_factory) -> Path:
    """A finished run of TINY_RUN on the tiny ingested data, by `pvs run`: the run folder
    exactly as the flow leaves it. About 30 s with its temporary Prefect server, so the
    tests using it are marked slow."""
    folder = tmp_path_factory.mktemp("search")
    config = write_yaml(folder / "tiny.yaml", {**TINY_RUN, "data": {**TINY_RUN["data"], "source": str(ingested)}})
    pvs_run(config, folder / "run")
    return folder / "run"


def index_image_ids(run_dir: Path, count: int) -> list[str]:
    summary = json.loads((run_dir / "run.json").read_text())
    ids = load_embeddings(summary["embeddings"], f"{summary['final_split']}_index").image_ids
    return sorted(image_id.decode() for image_id in ids)[:count]


def copy_index_images(run_dir: Path, demo_images: Path, count: int, folder: Path) -> list[Path]:
    """The first `count` index images of the run, copied under `folder` at their image id
    (so the search knows their product); their paths, sorted."""
    copies = []
    for image_id in index_image_ids(run_dir, count):
        (folder / image_id).parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy(demo_images / image_id, folder / image_id)))
    return copies


def result_blocks(printed: str) -> list[list[str]]:
    """The printed queries: per query, its header line and its result lines."""
    return [block.splitlines() for block in printed.split("\n\n")[1:] if block.startswith("query ")]


def copy_run(run_dir: Path, to: Path, **summary_changes) -> Path:
    """A run folder like `run_dir` (sharing its model, embeddings and data) with run.json edited."""
    to.mkdir()
    shutil.copy(run_dir / "run-config.yaml", to)
    shutil.copytree(run_dir / "data", to / "data")
    summary = {**json.loads((run_dir / "run.json").read_text()), **summary_changes}
    (to / "run.json").write_text(json.dumps(summary))
    return to


@pytest.mark.slow
def test_an_index_image_finds_itself_first_with_similarity_one_and_its_product_marked(capsys, run_dir, demo_images):
    (image_id,) = index_image_ids(run_dir, 1)
    printed = accepted(capsys, "search", "--run", run_dir, demo_images / image_id, "--top", 3)
    ((header, first, *rest),) = result_blocks(printed)
    product = image_id.split("/")[-2]
    assert header == f"query {demo_images / image_id} (product {product}; * marks its matches)"
    rank, score, found, found_product, mark = first.split()
    assert (rank, found, found_product, mark) == ("1", image_id, product, "*")
    assert float(score) == pytest.approx(1.0, abs=1e-4)  # the same bytes, the same preprocessing as extraction
    assert [line.split()[0] for line in rest] == ["2", "3"]


@pytest.mark.slow
def test_a_folder_is_searched_recursively_in_sorted_order_skipping_other_files(capsys, run_dir, demo_images, tmp_path):
    folder = tmp_path / "photos"
    copies = copy_index_images(run_dir, demo_images, 2, folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(b"")
    printed = accepted(capsys, "search", "--run", run_dir, folder, "--top", 4)
    blocks = result_blocks(printed)
    assert printed.startswith("2 image(s) searched in the ")
    assert [block[0].split()[1] for block in blocks] == [str(copy) for copy in copies]
    assert [len(block) for block in blocks] == [1 + 4, 1 + 4]
    assert all(block[1].endswith("*") for block in blocks)


@pytest.mark.slow
def test_sheet_has_one_row_per_query_and_outlines_the_true_match_green(capsys, run_dir, demo_images, tmp_path):
    folder = tmp_path / "photos"
    copy_index_images(run_dir, demo_images, 3, folder)
    printed = accepted(capsys, "search", "--run", run_dir, folder, "--top", 5, "--sheet", tmp_path / "sheet.png")
    assert printed.endswith(f"sheet: {tmp_path / 'sheet.png'}\n")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert (sheet.format, sheet.size) == ("PNG", sheet_size(3, 1 + 5))
        for row in range(3):  # each query's nearest item is itself: a green frame after the query's blue one
            top = row * CELL_HEIGHT + 2 + OUTLINE // 2
            assert sheet.getpixel((2 + OUTLINE // 2, top)) == COLOURS["query"]
            assert sheet.getpixel((CELL_WIDTH + GAP + 2 + OUTLINE // 2, top)) == COLOURS["match"]


@pytest.mark.slow
def test_an_unknown_image_is_searched_with_its_matches_outlined_grey(capsys, run_dir, demo_images, tmp_path):
    (image_id,) = index_image_ids(run_dir, 1)
    photo = shutil.copy(demo_images / image_id, tmp_path / "my-photo.jpg")  # not a path of the run's data
    printed = accepted(capsys, "search", "--run", run_dir, photo, "--top", 2, "--sheet", tmp_path / "sheet.png")
    ((header, *lines),) = result_blocks(printed)
    assert header == f"query {photo}" and not any(line.endswith("*") for line in lines)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.getpixel((CELL_WIDTH + GAP + 2 + OUTLINE // 2, 2 + OUTLINE // 2)) == COLOURS["unknown"]


@pytest.mark.slow
def test_a_run_ends_with_a_sheet_of_its_first_queries_and_names_it_in_run_json(run_dir):
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["search_sheet"] == str((run_dir / "search-sheet.png").resolve())
    queries = len(load_embeddings(summary["embeddings"], f"{summary['final_split']}_query").image_ids)
    with Image.open(summary["search_sheet"]) as sheet:
        assert (sheet.format, sheet.size) == ("PNG", sheet_size(min(4, queries), 1 + 5))
        # The queries' true products are known: every result is framed green or red, none grey.
        frames = {sheet.getpixel((column * CELL_WIDTH + GAP + 2 + OUTLINE // 2, 2 + OUTLINE // 2))
                  for column in range(1, 6)}
        assert frames <= {COLOURS["match"], COLOURS["other"]}


@pytest.mark.slow
def test_a_changed_model_file_is_refused(capsys, run_dir, demo_images, tmp_path):
    summary = json.loads((run_dir / "run.json").read_text())
    altered = tmp_path / "embedder.keras"
    altered.write_bytes(Path(summary["final_model"]).read_bytes() + b"\0")
    copy = copy_run(run_dir, tmp_path / "run", final_model=str(altered))
    message = refused(capsys, "search", "--run", copy, demo_images / index_image_ids(run_dir, 1)[0])
    assert message == f"{altered}: sha256 differs from the recorded one; the file was altered"


@pytest.mark.slow
def test_a_final_model_holding_code_is_refused_without_running_it(capsys, run_dir, demo_images, tmp_path):
    marker = tmp_path / "ran"
    model = model_with_code(tmp_path / "embedder.keras", marker)
    digest = sha256_file(model)
    with EmbeddingWriter(tmp_path / "embeddings", dim=4, metadata={"model_sha256": digest}) as writer:
        for name in ("test_query", "test_index"):
            writer.add(name, [[1.0, 0.0, 0.0, 0.0]], ["x.jpg"], [0])
    copy = copy_run(run_dir, tmp_path / "run", final_model=str(model), final_model_sha256=digest,
                    embeddings=str(tmp_path / "embeddings"), final_split="test")
    (image_id,) = index_image_ids(run_dir, 1)
    message = refused(capsys, "search", "--run", copy, demo_images / image_id)
    assert message.startswith(f"{model}: holds code (a Lambda layer or a function Keras does not know)")
    assert not marker.exists()


@pytest.mark.slow
def test_embeddings_of_another_model_are_refused(capsys, run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path / "run", final_model_sha256="0" * 64)
    embeddings = json.loads((run_dir / "run.json").read_text())["embeddings"]
    message = refused(capsys, "search", "--run", copy, tmp_path)
    assert message == (f"{embeddings}: computed by another model than run.json's final model; "
                       f"finish the run with `pvs run --config {run_dir.parent / 'tiny.yaml'} --run-dir {copy}`")


def test_a_folder_that_is_not_a_run_is_one_error(capsys, ingested):
    message = refused(capsys, "search", "--run", ingested, ingested)
    assert message == (f"{ingested}: not a run folder (no run.json or run-config.yaml); "
                       "give a folder written by `pvs run`")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing path", "folder without images", "corrupt image"])
def test_images_that_cannot_be_searched_are_one_error_naming_them(capsys, run_dir, tmp_path, case):
    path = {"missing path": tmp_path / "nowhere", "folder without images": tmp_path / "empty",
            "corrupt image": tmp_path / "photos" / "broken.jpg"}[case]
    expected = {
        "missing path": f"{path}: no such file or folder; give an image or a folder of images",
        "folder without images": f"{path}: no JPEG or PNG images in this folder or below it",
        "corrupt image": f"{path}: cannot decode jpeg",
    }[case]
    if case == "folder without images":
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "notes.txt").write_text("no images here")
    if case == "corrupt image":
        path.parent.mkdir()
        path.write_bytes(b"\xff\xd8\xff" + b"\0" * 100)  # a JPEG's start, then nothing a decoder can use
    message = refused(capsys, "search", "--run", run_dir, path.parent if case == "corrupt image" else path)
    assert message.startswith(expected), message
    assert "\n" not in message


@pytest.mark.parametrize("top", ["0", "ten"])
def test_top_must_be_a_whole_number_of_one_or_more(capsys, tmp_path, top):
    with pytest.raises(SystemExit) as exit_status:
        main(["search", "--run", str(tmp_path), str(tmp_path), "--top", top])
    assert exit_status.value.code == 2
    assert f"argument --top: {top!r} is not a whole number of 1 or more" in capsys.readouterr().err
