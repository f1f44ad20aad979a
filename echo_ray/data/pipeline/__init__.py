"""Corpus normalization on Ray Data (issue 4): one module per stage.

prepare (read + validate + filter) -> standardize -> dedup -> bilingual -> splits -> assemble,
orchestrated by `driver.run_pipeline`; `shards` holds the resume logic, `store` the output
location, `manifest` the accounting, `cli` the `echo-ray normalize` front end.

Usage:
    from echo_ray.data.pipeline.driver import run_pipeline
    manifest = run_pipeline(cfg.normalize)
"""
