"""The commands a newcomer runs: demo-data -> ingest -> verify -> preview, with their output."""

import numpy as np
from PIL import Image

from pipeline.cli import main


def test_demo_data_ingest_verify_and_preview_from_the_command_line(tmp_path, capsys):
    images, data = tmp_path / "images", tmp_path / "data"
    assert main(["demo-data", str(images), "--products", "12", "--shots", "3", "--categories", "3", "--image-size", "40"]) == 0
    assert "wrote 36 images of 12 products in 3 categories" in capsys.readouterr().out

    assert main(["ingest", str(images), str(data), "--shard-size", "30kB", "--workers", "1", "--no-progress", "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("36 images of 12 products (3 categories) in ")
    assert "train " in printed and f"manifest: {data / 'manifest.json'}" in printed

    assert main(["verify", str(data)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")

    assert main(["preview", str(data), "--image-size", "32"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {data / 'preview.png'}"
    figure = np.asarray(Image.open(data / "preview.png").convert("L"), dtype=np.float32)
    assert figure.shape[0] > 200 and figure.std() > 10  # a real picture, not a blank page


def test_size_option_understands_units(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nothing"), str(tmp_path / "out"), "--shard-size", "1.5MB"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
