"""judge_plan: which datasets need a judge, one file per dataset.

A judge (judge@<dataset>) is trained only for datasets that a generative experiment uses.
Which ones do is a fact of the whole `experiments` section, but judge@<dataset> must not
re-run (and re-score every generative experiment) at each edit of an experiment: this cheap
stage tracks the section and writes artifacts/judge_plan/<dataset>.json, whose content changes
only when that dataset's answer changes, and judge@<dataset> depends on that file alone.
"""

from __future__ import annotations

from pipeline import atomic, paths
from pipeline.config import Params, judged_by
from pipeline.stages import stage_main


def run(params: Params, _=None) -> dict[str, bool]:
    needed = {name: bool(judged_by(params, name)) for name in params.datasets}
    with atomic.atomic_dir(paths.JUDGE_PLAN) as tmp:
        for name, judge in needed.items():
            atomic.write_json(tmp / paths.judge_plan_file(name).name, {"judge": judge})
    return needed


def main(argv=None) -> int:
    return stage_main("judge_plan", run, argv, target=None)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
