"""What other Parquet readers see of a results store: pandas, pyarrow.dataset (the folder), DuckDB and
Polars (the glob ``STORE/**/*.parquet``). Each must see every record exactly once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KEY = ["benchmark", "split", "query_id", "model"]


def read_keys(store: Path) -> dict[str, pd.DataFrame]:
    """reader -> the (benchmark, split, query_id, model) rows it reads from ``store``, sorted."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads

    glob = f"{store}/**/*.parquet"
    frames = {
        "pandas": pd.read_parquet(store, columns=KEY),
        "pyarrow.dataset": pads.dataset(store, format="parquet").to_table(columns=KEY).to_pandas(),
        "duckdb": duckdb.sql(f"SELECT {', '.join(KEY)} FROM read_parquet('{glob}')").df(),
        "polars": pl.scan_parquet(glob).select(KEY).collect().to_pandas(),
    }
    return {k: v.astype({"query_id": "int64"}).astype({c: str for c in KEY if c != "query_id"})
            .sort_values(KEY).reset_index(drop=True) for k, v in frames.items()}


def assert_every_reader_sees(store: Path, expected: pd.DataFrame) -> None:
    """Every reader reads exactly the keys of ``expected`` (each once)."""
    want = expected[KEY].astype({"query_id": "int64"}).astype({c: str for c in KEY if c != "query_id"}) \
        .sort_values(KEY).reset_index(drop=True)
    assert not want.duplicated().any()
    for reader, got in read_keys(Path(store)).items():
        assert len(got) == len(want), f"{reader} reads {len(got)} rows for {len(want)} records"
        pd.testing.assert_frame_equal(got, want, obj=reader)
