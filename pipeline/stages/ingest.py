"""ingest@<dataset>: fetch a declared source into data/raw/<dataset>/."""

from pipeline.config import Params
from pipeline.data import datasets
from pipeline.stages import dataset_run, default_tracking, stage_main


def run(params: Params, dataset: str):
    with dataset_run(params, "ingest", dataset) as (cfg, run):
        out = datasets.ingest(dataset, cfg)
        run.log_metrics({"samples": datasets.raw_meta(dataset)["samples"]})
    return out


def main(argv=None) -> int:
    return stage_main("ingest", run, argv, target="dataset", tracked=default_tracking)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
