"""The orchestration side of product-visual-search: CLI, reports, (later) Prefect tasks."""
