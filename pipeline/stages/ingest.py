"""ingest@<dataset>: fetch a declared source into data/raw/<dataset>/."""

from pipeline import data, tracking
from pipeline.config import Params, flatten
from pipeline.stages import stage_main


def run(params: Params, dataset: str):
    cfg = params.datasets[dataset]
    with tracking.stage_run(
        params.defaults.tracking,
        name=f"{dataset}/ingest",
        tags={"stage": "ingest", "dataset": dataset, "source": cfg.source},
    ) as run:
        run.log_params(flatten(cfg))
        out = data.ingest(dataset, cfg)
        run.log_metrics({"samples": data.raw_meta(dataset)["samples"]})
    return out


def main(argv=None) -> int:
    return stage_main("ingest", run, argv, target="dataset")


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
