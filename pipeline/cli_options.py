"""The `pvs` command line's options: one subcommand each, with its help; `pipeline/cli.py`
runs them."""

import argparse
from pathlib import Path


def size(text: str) -> int:
    """'128MB', '64k', '1e6' or '1000' -> bytes (decimal units, as disk sizes are sold)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    cleaned = text.strip().lower().removesuffix("b")
    try:
        if cleaned and cleaned[-1] in units:
            return int(float(cleaned[:-1]) * units[cleaned[-1]])
        return int(float(cleaned))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 128MB, 500k or 1000000") from None


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def at_least_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of 0 or more")
    return value


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number from 0 to 65535")
    return int(text)


def command_line() -> argparse.ArgumentParser:
    from pipeline.catalog.commands import add_index_parser

    parser = argparse.ArgumentParser(prog="pvs", description="Train product visual search models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo-data", help="generate the offline demo product dataset")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--products", type=int, default=60)
    demo.add_argument("--shots", type=int, default=6, help="images per product")
    demo.add_argument("--categories", type=int, default=5)
    demo.add_argument("--image-size", type=int, default=96, help="pixels of the longer side")
    demo.add_argument("--seed", type=int, default=0)
    # Difficulty knobs; left out, DemoOptions' defaults (tfrecords/demo_data.py) apply.
    demo.add_argument("--similarity", type=float, help="how alike the products of a category are, 0-1; higher is harder")
    demo.add_argument("--clutter", type=float, help="share of shots in a cluttered scene rather than a studio, 0-1")

    ingest = commands.add_parser("ingest", help="images (CSV or folder) to sharded TFRecords")
    ingest.add_argument("source", type=Path, help="a CSV (path, product_id[, category][, split]) or an image folder")
    ingest.add_argument("out_dir", type=Path)
    ingest.add_argument("--shard-size", type=size, default="128MB", help="target bytes per shard (default 128MB)")
    ingest.add_argument("--val-fraction", type=float, default=0.1)
    ingest.add_argument("--test-fraction", type=float, default=0.1)
    ingest.add_argument("--seed", type=int, default=0)
    ingest.add_argument("--workers", type=int, default=None, help="parallel shard writers (default: CPU count)")
    ingest.add_argument("--strict", action="store_true", help="fail on the first unusable image")
    ingest.add_argument("--no-progress", action="store_true")

    verify = commands.add_parser("verify", help="check every shard of a folder against its manifest")
    verify.add_argument("data_dir", type=Path)

    preview = commands.add_parser("preview", help="draw what the reading pipeline gives the model")
    preview.add_argument("data_dir", type=Path)
    preview.add_argument("--out", type=Path, default=None, help="PNG path (default DATA_DIR/preview.png)")
    preview.add_argument("--image-size", type=int, default=96)

    search = commands.add_parser("search", help="the index items most similar to images, with a run's final model")
    search.add_argument("images", type=Path, metavar="IMAGE_OR_FOLDER",
                        help="an image, or a folder searched recursively")
    searched = search.add_mutually_exclusive_group(required=True)
    searched.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                          help="a run folder (or gs:// URL) written by `pvs run`; its final split's index is searched")
    searched.add_argument("--index", dest="index_dir", metavar="INDEX",
                          help="a catalog index built by `pvs index build`, searched with its own model")
    search.add_argument("--top", type=at_least_one, default=10, help="results per image (default 10)")
    search.add_argument("--sheet", type=Path, default=None, help="also draw the results as a contact sheet (PNG)")
    cache_dir_option(search)

    export = commands.add_parser("export", help="a finished run's final embedder as a SavedModel, TFLite or .keras "
                                                "file: images in, L2-normalised embeddings out")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (or gs:// URL) written by `pvs run`")
    export.add_argument("--format", required=True, choices=("savedmodel", "tflite", "keras"),
                        help="savedmodel: for TF Serving, encoded JPEG/PNG bytes in (DIR/N/, N the next version: "
                             "TF Serving serves the highest and picks up a new one); tflite: DIR/model.tflite; "
                             "keras: DIR/model.keras (both of prepared float images)")
    export.add_argument("--out", dest="out_dir", type=Path, required=True, metavar="DIR",
                        help="the export's folder; DIR/export.json, written last, lists its files")
    export.add_argument("--quantize", choices=("float32", "float16", "int8"), default="float32",
                        help="tflite only: the precision (default float32); prints what it costs in MAR@10")
    export.add_argument("--calibration-images", type=at_least_one, default=200,
                        help="int8: train images that set its ranges (default 200)")
    export.add_argument("--check-images", type=at_least_one, default=32,
                        help="final-split images that must embed as the run embedded them (default 32)")
    export.add_argument("--force", action="store_true",
                        help="replace an existing tflite or keras export (a savedmodel export adds a version)")
    cache_dir_option(export)

    run = commands.add_parser("run", help="train: ingestion, baseline, the phases and extraction (resumable)")
    run.add_argument("--config", type=Path, required=True, help="a YAML file, e.g. configs/demo.yaml")
    run.add_argument("--run-dir", default=None, help="a folder or a gs:// URL (default runs/<config name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. phases.full.epochs=3 (repeatable)")
    run.add_argument("--force", nargs="+", default=[], metavar="STEP",
                     help="recompute these steps: ingest, baseline, a phase name, extraction")

    add_index_parser(commands)

    serve = commands.add_parser("serve", help="search a catalog index over HTTP: POST /search, and a web page at /")
    serve.add_argument("--index", dest="index_dir", required=True, metavar="INDEX",
                       help="a catalog index built by `pvs index build`, searched with its own model")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                                                          "machine only; 0.0.0.0 for every network)")
    serve.add_argument("--port", type=port, default=8080, help="default 8080; 0 picks a free one")
    serve.add_argument("--max-batch", type=at_least_one, default=16,
                       help="concurrent searches embedded in one model call (default 16)")
    serve.add_argument("--batch-wait-ms", type=at_least_zero, default=5.0,
                       help="how long a search waits for others to share its model call (default 5)")
    serve.add_argument("--max-upload-bytes", type=size, default="10MB",
                       help="larger uploads are refused with 413 (default 10MB)")
    serve.add_argument("--thumbnail-size", type=at_least_one, default=256,
                       help="pixels of a thumbnail's longest side (default 256)")

    commands.add_parser("configs", help="list the named configs of the library (configs/) and what each is for")

    report = commands.add_parser("report", help="the leaderboard of one or more runs, and their chart")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders or gs:// URLs")
    report.add_argument("--chart", type=Path, default=None,
                        help="PNG path (default RUN_DIR/report.png for one run, its local mirror's for a gs:// one; "
                             "./comparison.png for several)")
    cache_dir_option(report)

    compare = commands.add_parser("compare", help="runs side by side: scores per phase, test score, model size, time")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders or gs:// URLs")
    compare.add_argument("--chart", type=Path, default=Path("comparison.png"), help="PNG path (default ./comparison.png)")
    compare.add_argument("--table", type=Path, default=None, help="also write the table as markdown to this file")
    cache_dir_option(compare)
    return parser


def cache_dir_option(command) -> None:
    command.add_argument("--cache-dir", default=None, metavar="DIR",
                         help="where gs:// run folders are mirrored (default: storage.cache_dir's default, "
                              "~/.cache/product-visual-search)")
