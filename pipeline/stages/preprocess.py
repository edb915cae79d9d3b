"""preprocess@<dataset>: seeded stratified split, train-fitted normalisation, schema.json."""

from pipeline import data, tracking
from pipeline.config import Params, flatten
from pipeline.stages import stage_main


def run(params: Params, dataset: str):
    cfg = params.datasets[dataset]
    with tracking.stage_run(
        params.defaults.tracking,
        name=f"{dataset}/preprocess",
        tags={"stage": "preprocess", "dataset": dataset, "source": cfg.source},
    ) as run:
        run.log_params(flatten(cfg))
        out = data.preprocess(dataset, cfg)
        schema = data.load_schema(dataset)
        run.log_metrics({f"{split}/samples": n for split, n in schema["counts"].items()})
        run.log_dict(schema, "schema.json")
    return out


def main(argv=None) -> int:
    return stage_main("preprocess", run, argv, target="dataset")


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
