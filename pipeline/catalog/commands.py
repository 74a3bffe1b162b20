"""`pvs index build | add | update | info` and `pvs search --index`: the command line of catalog indexes."""

import argparse
from pathlib import Path


def add_index_parser(commands) -> None:
    """The `index` command and its subcommands, on `pvs`' subparsers."""
    from pipeline.cli_options import at_least_one

    index = commands.add_parser("index", help="embed a catalog with a run's final model and build its search index")
    actions = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="a new index of one or more sources (resumable: run it again to go on)")
    build.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="a CSV (path, product_id[, category]), an image folder or an ingested folder; or gs:// or s3://")
    build.add_argument("--run", dest="run_dir", required=True, metavar="RUN_DIR", help="a finished run folder")
    build.add_argument("--out", dest="index_dir", required=True, metavar="INDEX", help="the index folder")
    build.add_argument("--kind", default="exact", choices=["exact", "flat", "ivf_flat", "hnsw", "ivf_pq"],
                       help="exact (default, no faiss), or a faiss index: flat (exact), ivf_flat, hnsw, ivf_pq")
    build.add_argument("--param", dest="parameters", action="append", default=[], metavar="NAME=VALUE",
                       help="a parameter of the kind, e.g. nprobe=16 (repeatable; see BENCHMARKS.md)")
    build.add_argument("--recall-queries", type=at_least_one, default=1000,
                       help="catalog images searched to measure an approximate kind's recall@10 (default 1000)")
    build.add_argument("--force", action="store_true", help="embed and assemble again")

    add = actions.add_parser("add", help="add sources to an index: only their images are embedded")
    add.add_argument("index_dir", metavar="INDEX")
    add.add_argument("sources", nargs="+", metavar="SOURCE")

    update = actions.add_parser("update", help="read the index's sources again: changed shards are embedded, "
                                               "removed images dropped")
    update.add_argument("index_dir", metavar="INDEX")
    update.add_argument("--force", action="store_true", help="embed and assemble again")

    info = actions.add_parser("info", help="what an index holds: run, model, sources, kind, recall@10")
    info.add_argument("index_dir", metavar="INDEX")


def parameters_of(pairs: list[str]) -> dict:
    """NAME=VALUE pairs, values as YAML reads them (16 -> int, 0.5 -> float, text stays text)."""
    import yaml

    parameters = {}
    for pair in pairs:
        name, sign, value = pair.partition("=")
        if not sign or not name:
            raise argparse.ArgumentTypeError(f"--param {pair!r}: give NAME=VALUE, e.g. nprobe=16")
        parameters[name.strip()] = yaml.safe_load(value)
    return parameters


def index_command(args) -> None:
    from pipeline.catalog.index import read_index_manifest

    if args.index_command == "info":
        print(describe(Path(args.index_dir), read_index_manifest(Path(args.index_dir))))
        return
    from pipeline.catalog.settings import CatalogSettings
    from pipeline.prefect_server import prefect_api

    arguments = {"index_dir": args.index_dir, "force": getattr(args, "force", False)}
    if args.index_command == "build":
        settings = CatalogSettings(kind=args.kind, parameters=parameters_of(args.parameters),
                                   recall_queries=args.recall_queries)  # checked before Prefect starts
        arguments.update(run_dir=args.run_dir, sources=args.sources, settings=settings.model_dump())
    elif args.index_command == "add":
        arguments.update(sources=args.sources, add=True)
    with prefect_api():
        from flows import catalog_index

        manifest = catalog_index(**arguments)
    print(describe(Path(args.index_dir), manifest))


def describe(folder: Path, manifest: dict) -> str:
    """index.json in a few lines."""
    recall = manifest.get("recall_at_10")
    measured = (f", recall@10 {recall:.4f} against the exact search ({manifest['recall_queries']} catalog queries)"
                if recall is not None else "")
    sources = ", ".join(f"{entry['source']} ({entry['images']})" for entry in manifest["sources"])
    return "\n".join([
        f"index: {folder}: {manifest['count']} images of {manifest['products']} products, {manifest['dim']}-d",
        f"search: {manifest['kind']} {manifest['parameters'] or ''}".rstrip() + measured,
        (f"model: {manifest['model']['sha256'][:12]} (the final model of {manifest['run']}), "
         f"test-time augmentation {manifest['test_time_augmentation']}"),
        f"sources: {sources}",
        f"assembled: {manifest['mode']} in {manifest['seconds']:.1f} s",
    ])


def search_index(args) -> None:
    """`pvs search --index INDEX IMAGES`: the catalog items most similar to each image."""
    from pipeline.catalog.index import open_catalog, search_catalog
    from pipeline.search import Query, check_query, embed, find_images

    index = open_catalog(Path(args.index_dir))
    images = find_images(args.images)
    for path in images:
        check_query(path)
    queries = [Query(str(path), path) for path in images]
    positions, similarities = search_catalog(index, embed(index, queries), args.top)
    print(f"{len(queries)} image(s) searched in the {len(index.image_ids)} images of the index {args.index_dir}\n")
    blocks = []
    for query, rows, scores in zip(queries, positions, similarities):
        width = max(len(index.image_ids[row]) for row in rows)
        lines = [f"query {query.name}"]
        for rank, (row, score) in enumerate(zip(rows, scores), start=1):
            lines.append(f"{rank:>4}  {score:6.4f}  {index.image_ids[row].decode():<{width}}  {index.product_name(row)}")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
