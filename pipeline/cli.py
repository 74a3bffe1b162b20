"""`pvs`: the command line of product-visual-search.

Errors the user can fix (our `UserError`s and invalid options) print one message
and exit with status 2, without a traceback; anything else is a bug and keeps it.
"""

import signal
import sys
from pathlib import Path

from pydantic import ValidationError

import tfrecords  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before anything imports TensorFlow)
from pipeline.cli_options import command_line
from pipeline.redaction import redact
from tfrecords.errors import UserError

EXIT_USER_ERROR = 2


def _fetched(location: str, cache_dir: str | None, parts: tuple[str, ...] = ()) -> Path:
    """A run folder given on the command line, local: a gs:// one pulled into its mirror."""
    from pipeline.storage.fetch import fetch_run
    from pipeline.storage.remote import is_remote
    from pipeline.storage.shard_cache import StorageSettings

    if not is_remote(location):
        return Path(location)
    from phases.config import StorageConfig

    storage = StorageConfig() if cache_dir is None else StorageConfig(cache_dir=cache_dir)
    return fetch_run(location, StorageSettings.of(storage), parts)


def _run(args) -> None:
    from pipeline.config_files import load_config
    from pipeline.config_inputs import check_inputs
    from pipeline.config_overrides import parse_overrides
    from pipeline.run_root import check_run_folder, default_run_dir

    # Config, input and run folder errors first, before Prefect is imported (seconds) or started.
    overrides = parse_overrides(args.overrides)
    config = load_config(args.config, overrides)
    check_inputs(config, str(args.config))
    run_dir = str(args.run_dir or default_run_dir(args.config))
    check_run_folder(run_dir, args.config, config)
    from pipeline.storage.staging import check_locations

    # gs:// buckets and objects
    check_locations(args.run_dir or "", config.data.source, config.model.weights, config.storage.read_shards)

    from pipeline.prefect_server import prefect_api

    request = []

    def meanwhile() -> None:
        # While a temporary Prefect server starts: the flow's imports (TensorFlow, Prefect's
        # engine: seconds the server's own start then hides), then force and the worker's
        # role, checked once.
        from pipeline.running import RunRequest

        request.append(RunRequest.of(config, str(args.config), overrides, run_dir, args.force))

    with prefect_api(meanwhile):  # PREFECT_API_URL's server, checked to answer, or a temporary one
        from flows import finetune

        summary = finetune(config_path=str(args.config), overrides=overrides, run_dir=run_dir, force=args.force,
                           request=request[0])
    from pipeline.reports import read_scores
    from pipeline.scores import ScoreTable
    from pipeline.storage.remote import is_remote
    from pipeline.storage.run_store import RunRoot
    from pipeline.storage.shard_cache import StorageSettings

    local = RunRoot(run_dir, StorageSettings.of(config)).local  # a gs:// run's local mirror holds the same files
    table = ScoreTable(local / "scores.csv")
    table.rows = read_scores(local)
    print(table.render())
    from pipeline.verdict import run_verdict

    verdict = run_verdict(table.rows, config.evaluation.final_split, summary.get("final_scores"), config.evaluation.split)
    if verdict:
        print("\n" + "\n".join(verdict) + "\n")
    shown = run_dir.rstrip("/") if is_remote(run_dir) else str(Path(run_dir))
    print(f"scores: {shown}/scores.csv (chart: {shown}/scores.png)")
    print(f"submission: {shown}/submission.csv")


def _report(args) -> None:
    from pipeline.charts import write_comparison_chart, write_score_chart
    from pipeline.outputs import output_file
    from pipeline.reports import leaderboard, read_scores, render_leaderboard, run_names
    from pipeline.verdict import recorded_verdict

    folders = [_fetched(run_dir, args.cache_dir) for run_dir in args.run_dirs]
    default = folders[0] / "report.png" if len(folders) == 1 else Path("comparison.png")
    with output_file(args.chart or default, "--chart", default.name, default=args.chart is None):
        runs = {name: read_scores(folder) for folder, name in zip(folders, run_names(args.run_dirs))}
        for folder, (name, rows) in zip(folders, runs.items()):
            print(render_leaderboard(name, leaderboard(rows)))
            print("\n".join(["", *recorded_verdict(folder, rows), ""]))
        if len(runs) == 1:
            chart = write_score_chart(rows, args.chart or default, title=f"{name}: mar_at_10")
        else:
            chart = write_comparison_chart(runs, args.chart or default)
    print(f"chart: {chart}")


def _configs(args) -> None:
    from pipeline.config_files import library, library_configs, load_config

    configs = sorted(library_configs(), key=lambda item: ("/" in item[0], item[0]))  # the main ones first
    width = max(len(name) for name, _ in configs)
    group = None
    for name, _ in configs:
        folder = name.rpartition("/")[0]
        if folder != group:
            group = folder
            print(f"{folder or 'main'}:")
        print(f"  {name:<{width}}  {load_config(name).description}")
    print(f"\n{len(configs)} configs in {library()}; run one with: pvs run --config NAME [--set data.source=...]")


def _compare(args) -> None:
    from pipeline.compare import CAPTION, read_runs, render_markdown, render_text, write_chart
    from pipeline.outputs import output_file
    from pipeline.reports import run_names
    from tfrecords.files import write_text_atomic

    with output_file(args.chart, "--chart", "comparison.png"), output_file(args.table, "--table", "comparison.md"):
        folders = [_fetched(run_dir, args.cache_dir, ("model", "embeddings_manifest")) for run_dir in args.run_dirs]
        runs = read_runs(folders, names=run_names(args.run_dirs))
        print(f"{CAPTION}:\n")
        print(render_text(runs))
        print(f"\nchart: {write_chart(runs, args.chart)}")
        if args.table:
            write_text_atomic(args.table, render_markdown(runs))
            print(f"table: {args.table}")


def demo_options(arguments: list[str]):
    """The DemoOptions that `pvs demo-data ARGUMENTS` writes with (ARGUMENTS: the output folder and options)."""
    return _demo_options(command_line().parse_args(["demo-data", *arguments]))


def _demo_options(args):
    from tfrecords.demo_data import DemoOptions

    knobs = {name: getattr(args, name) for name in ("similarity", "clutter") if getattr(args, name) is not None}
    return DemoOptions(args.products, args.shots, args.categories, args.image_size, args.seed, **knobs)


def _demo_data(args) -> None:
    from tfrecords.demo_data import write_demo_data

    options = _demo_options(args)
    try:
        count = write_demo_data(args.out_dir, options)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"wrote {count} images of {args.products} products in {args.categories} categories to {args.out_dir}")


def _ingest(args) -> None:
    from tfrecords.ingest import ingest, summary
    from tfrecords.options import IngestOptions

    chosen = dict(
        shard_size=args.shard_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        strict=args.strict,
    )
    if args.workers is not None:
        chosen["workers"] = args.workers
    manifest = ingest(args.source, args.out_dir, IngestOptions(**chosen), progress=not args.no_progress)
    print(summary(manifest))
    print(f"manifest: {args.out_dir / 'manifest.json'}")


def _verify(args) -> None:
    from tfrecords.manifest import read_manifest, verify_shards

    manifest = read_manifest(args.data_dir)  # a data folder's or an embeddings folder's: shards are checked alike
    verify_shards(args.data_dir, manifest.shards)
    total = sum(shard.records for shard in manifest.shards)
    print(f"ok: {len(manifest.shards)} shards, {total} records match {args.data_dir / 'manifest.json'}")


def _preview(args) -> None:
    from pipeline.outputs import output_file
    from pipeline.preview import check_memory_for, write_preview

    check_memory_for(args.image_size)
    out = args.out or args.data_dir / "preview.png"
    with output_file(out, "--out", "preview.png", default=args.out is None):
        print(f"wrote {write_preview(args.data_dir, out, args.image_size)}")


def _search(args) -> None:
    from pipeline.outputs import output_file

    if args.index_dir:
        from pipeline.catalog.commands import search_index

        if args.sheet:
            raise UserError("--sheet draws a run's search (--run); with --index the results are printed")
        return search_index(args)
    from pipeline.search import embed, find_images, open_run, read_queries, render, search
    from pipeline.search_sheets import draw

    with output_file(args.sheet, "--sheet", "sheet.png"):
        run = open_run(_fetched(args.run_dir, args.cache_dir, ("model", "embeddings", "data")))
        queries = read_queries(find_images(args.images), run.index)
        results = search(run.index, embed(run, queries), args.top)
        count = len(run.index.items.vectors)
        print(f"{len(queries)} image(s) searched in the {count} {run.index.split}_index images of {args.run_dir}\n")
        print(render(queries, results, run.index))
        if args.sheet:
            print(f"\nsheet: {draw(args.sheet, queries, results, run.index)}")


def _index(args) -> None:
    from pipeline.catalog.commands import index_command

    index_command(args)


def _serve(args) -> None:
    from pipeline.serving.server import ServeOptions, serve

    serve(ServeOptions(Path(args.index_dir), args.host, args.port, args.max_batch, args.batch_wait_ms,
                       args.max_upload_bytes, args.thumbnail_size))


def _export(args) -> None:
    from pipeline.export import export_run, render

    run_dir = _fetched(args.run_dir, args.cache_dir, ("model", "embeddings", "data"))
    print(render(export_run(run_dir, args.out_dir, args.format, args.quantize, args.check_images,
                            args.calibration_images, args.force)))


COMMANDS = {
    "configs": _configs, "demo-data": _demo_data, "ingest": _ingest, "verify": _verify, "preview": _preview, "run": _run, "report": _report,
    "compare": _compare,
    "search": _search,
    "export": _export,
    "index": _index,
    "serve": _serve,
}


# What an interrupted command keeps, for the line that says how to go on.
KEPT_WHEN_INTERRUPTED = {"run": ": finished steps and epochs are kept", "ingest": ": finished shards are kept",
                         "index": ": finished shards are kept"}


def main(argv: list[str] | None = None) -> int:
    from pipeline.prefect_server import kill_servers
    from pipeline.stopping import exit_status, stop_on_signals

    if argv is None:  # the program itself, not a test calling main(): TensorFlow's known C++ lines dropped
        from pipeline.console import filter_stderr

        filter_stderr()
    args = command_line().parse_args(argv)
    try:
        with stop_on_signals(at_once=kill_servers):
            COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())
        print(f"error: invalid option: {redact(problems)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BaseException as error:  # Ctrl-C or SIGTERM (pipeline/stopping.py), or a bug
        status = exit_status(error)
        if status is None:
            raise
        kept = KEPT_WHEN_INTERRUPTED.get(args.command, "")
        print(f"interrupted ({signal.Signals(status - 128).name}); run the same command again to resume{kept}",
              file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
