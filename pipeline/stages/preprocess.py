"""preprocess@<dataset>: seeded stratified split, train-fitted normalisation, schema.json."""

from pipeline.config import Params
from pipeline.data import datasets
from pipeline.stages import dataset_run, default_tracking, stage_main


def run(params: Params, dataset: str):
    with dataset_run(params, "preprocess", dataset) as (cfg, run):
        out = datasets.preprocess(dataset, cfg)
        schema = datasets.load_schema(dataset)
        run.log_metrics({f"{split}/samples": n for split, n in schema["counts"].items()})
        report_handling(run, f"preprocess@{dataset}", schema)
        run.log_dict(schema, "schema.json")
    return out


def report_handling(run, label: str, schema: dict) -> None:
    """What ingest and preprocess did to the data (skipped files, filled or dropped values):
    a console line each, a tag and counts on the stage's MLflow run, as in schema.json."""
    notes = datasets.handling_notes(schema)
    for note in notes:
        print(f"{label}: {note}", flush=True)
    if notes:
        run.set_tags({"data_handling": "; ".join(notes)})
    counts = {
        "skipped_unreadable": len(schema.get("skipped_unreadable", [])),
        "missing_values": sum(schema.get("missing_values", {}).values()),
        "rows_dropped": schema.get("rows_dropped", 0),
    }
    run.log_metrics({key: n for key, n in counts.items() if n})


def main(argv=None) -> int:
    return stage_main("preprocess", run, argv, target="dataset", tracked=default_tracking)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
