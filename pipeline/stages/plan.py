"""plan: which datasets need a judge and what each experiment's search depends on, one small
file per dataset and per experiment.

Both are facts of the whole `experiments` section (and of the defaults), but judge@<dataset>
and tune@<experiment> must not re-run at each edit of it: a judge re-scores every generative
experiment, and an experiment that does not tune has no search to redo when its train params
change. This cheap stage (no torch) tracks those params and writes
artifacts/judge_plan/<dataset>.json and artifacts/tune_plan/<experiment>.json, whose content
changes only when that dataset's or that experiment's answer does; judge@ and tune@ depend on
their file instead of on the params.
"""

from __future__ import annotations

from pipeline import atomic, paths
from pipeline.config import ExperimentParams, Params, judged_by
from pipeline.stages import stage_main

# what a search reads of its experiment: the params dvc.yaml gave tune@ before this plan
SEARCHED = ("seed", "device", "model", "train", "tune", "dataset")


def judge_plan(params: Params, dataset: str) -> dict:
    """The content of the dataset's judge plan: whether a generative experiment uses it."""
    return {"judge": bool(judged_by(params, dataset))}


def tune_plan(exp: ExperimentParams) -> dict:
    """The content of the experiment's tune plan: the params its search depends on, or only
    that it does not tune (then no edit but `tune.enabled` concerns tune@)."""
    if not exp.tune.enabled:
        return {"tune": False}
    return {"tune": True, **exp.model_dump(mode="json", include=set(SEARCHED))}


def run(params: Params, _=None) -> dict[str, bool]:
    with atomic.atomic_dir(paths.JUDGE_PLAN) as tmp:
        for name in params.datasets:
            atomic.write_json(tmp / paths.judge_plan_file(name).name, judge_plan(params, name))
    with atomic.atomic_dir(paths.TUNE_PLAN) as tmp:
        for name, exp in params.experiments.items():
            atomic.write_json(tmp / paths.tune_plan_file(name).name, tune_plan(exp))
    return {name: judge_plan(params, name)["judge"] for name in params.datasets}


def main(argv=None) -> int:
    return stage_main("plan", run, argv, target=None)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
