"""``cascade import FILE --out RESULTS``: validate per-query results and add them to a results store."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("import", help="validate per-query x model results (Parquet/CSV) and store them",
                       description="Validate per-query x model results (Parquet or CSV with the columns benchmark, "
                                   "split, query_id, model, confidence, correct, input_tokens, output_tokens, cost) "
                                   "and add them to a results store. Bad input writes nothing. Writes hold the "
                                   "store's lock (STORE/_store.lock) and every shard gets a sha256 manifest; "
                                   "a model must cover the same queries as the models already stored.")
    p.add_argument("file", help="Parquet or CSV file")
    p.add_argument("--out", required=True, help="results store folder (created if missing; not a file, not "
                                                "inside another store)")
    p.add_argument("--prices", help="YAML price table {model: {input: USD/1M tokens, output: USD/1M tokens}}, "
                                    "used when the file has no cost column")
    p.add_argument("--overwrite", action="store_true", help="replace records the store already holds for "
                                                            "the same benchmark and model")
    p.set_defaults(func=run)


def run(args) -> int:
    from cascade.data import records

    prices = records.PriceTable.from_file(args.prices) if args.prices else None
    done = records.import_file(args.file, args.out, prices=prices, overwrite=args.overwrite)
    print(f"imported {done.rows} records into {args.out}")
    print(done.summary.to_string())
    return 0
