"""The orchestration side of product-visual-search: Prefect tasks and their records, storage, reports, the `pvs` CLI."""
