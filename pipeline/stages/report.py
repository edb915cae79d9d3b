"""report: reports/index.md and a self-contained reports/index.html for all experiments."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import yaml

from pipeline import atomic, paths, tracking
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.metrics import with_interval
from pipeline.stages import default_tracking, stage_main
from pipeline.tasks.kinds import KINDS

TASK_ORDER = list(KINDS)
COLUMNS = (
    "experiment",
    "task",
    "model",
    "dataset",
    "main metric",
    "value [95% interval]",
    "ratio to baseline",
    "parameters",
    "train s",
    "samples/s",
    "device",
)


def read_summaries(params: Params) -> list[dict]:
    """Every experiment's summary.json, in the report's order (by task, best first)."""
    summaries = []
    for experiment in params.experiments:
        path = paths.summary_file(experiment)
        if not path.is_file():
            raise PipelineError(f"{path} not found; run `dvc repro evaluate@{experiment}` first")
        summaries.append(json.loads(path.read_text()))
    return sorted(summaries, key=_rank)


def run(params: Params, _name=None) -> list[dict]:
    summaries = read_summaries(params)
    track = params.defaults.tracking
    with tracking.stage_run(track, name="report", tags={"stage": "report"}) as run:
        ids = [s.get("evaluate_run_id") for s in summaries]
        ids += [s["train"].get("mlflow_run_id") for s in summaries]
        links = run_links(track.uri, run.experiment_ids(ids) or {})
        experiment_id = run.share_grouped_view(headline_columns(summaries))
        if experiment_id:
            links[GROUPED] = grouped_view_link(track.uri, experiment_id)
        atomic.write_text(paths.REPORT_MD, render_markdown(summaries, links))
        atomic.write_text(paths.REPORT_HTML, render_html(summaries, links))
        run.log_artifact(paths.REPORT_HTML)
        run.log_metrics(
            {f"{s['experiment']}/{main_metric(s)[0]}": main_metric(s)[1] for s in summaries}
        )
    return summaries


# where `make ui` serves the local store
LOCAL_UI = "http://127.0.0.1:5000"
# the links' key of the MLflow view of all runs grouped by pipeline invocation
GROUPED = "grouped"


def _ui(uri: str) -> str:
    """The MLflow UI of the store: the tracking server's own, or `make ui`'s for a local one."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def run_links(uri: str, experiment_ids: dict[str, str]) -> dict[str, str]:
    """MLflow UI addresses of the runs this store holds."""
    return {r: f"{_ui(uri)}/#/experiments/{e}/runs/{r}" for r, e in experiment_ids.items()}


def grouped_view_link(uri: str, experiment_id: str) -> str:
    """The MLflow UI's runs table grouped by pipeline invocation (one group per `dvc repro`),
    the view `share_grouped_view` saved."""
    from pipeline.tracking.store import GROUPED_VIEW

    return f"{_ui(uri)}/#/experiments/{experiment_id}/runs?viewStateShareKey={GROUPED_VIEW}"


def headline_columns(summaries: list[dict]) -> list[str]:
    """The main test metrics of the experiments' tasks, in task order: the grouped view's
    metric columns."""
    return list(dict.fromkeys(main_metric(s)[0] for s in summaries))


def _run(run_id: str, links: dict[str, str]) -> str:
    return f"[`{run_id}`]({links[run_id]})" if run_id in links else f"`{run_id}`"


def main_metric(summary: dict) -> tuple[str, float]:
    name = KINDS[summary["task"]].main_metric
    return name, summary["metrics"][name]


def _rank(summary: dict):
    higher_better = KINDS[summary["task"]].higher_is_better
    value = main_metric(summary)[1]
    return TASK_ORDER.index(summary["task"]), -value if higher_better else value


def leaderboard_rows(summaries: list[dict]) -> list[list[str]]:
    rows = []
    for s in summaries:
        t = s["train"]
        name, _ = main_metric(s)
        kind = KINDS[s["task"]]
        ratio_key = kind.baseline_ratio
        ratio = s["metrics"].get(ratio_key)
        ratio = "" if ratio is None else f"{ratio:.3f}x {kind.baseline}"
        rows.append(
            [
                s["experiment"],
                s["task"],
                s["model"],
                s["dataset"],
                f"{name} ({'higher' if kind.higher_is_better else 'lower'} is better)",
                with_interval(s["metrics"], name),
                ratio,
                f"{t['parameters']:,}",
                f"{t['train_seconds']:.1f}",
                f"{t['samples_per_second']:,.0f}",
                t["device"],
            ]
        )
    return rows


def _facts(s: dict, links: dict[str, str]) -> list[str]:
    t = s["train"]
    facts = [
        f"MLflow runs: train {_run(t['mlflow_run_id'], links)}, "
        f"evaluate {_run(s['evaluate_run_id'], links)}"
        if t["mlflow_run_id"]
        else "MLflow: off (tracking.enabled: false)",
        f"data: `{s['dataset']}`, DVC hash `{s['data']['dvc_hash']}`, "
        f"split sizes {s['data']['counts']}",
        f"best epoch {t['best_epoch']} of {t['epochs_run']}"
        + (" (stopped early)" if t["stopped_early"] else "")
        + f", model weights of epoch {t.get('kept_epoch', t['best_epoch'])}",
    ]
    registry = s.get("registry")
    if registry:
        facts.append(
            f"registry: `{registry['model']}` version {registry['version']} "
            f"{'promoted to' if registry['promoted'] else 'not promoted to'} champion "
            f"({registry['reason']}); champion is version {registry['champion_after']}"
        )
    return facts


def synthetic_facts(s: dict, summaries: list[dict]) -> list[str]:
    """For an experiment trained on a synthetic dataset: what was added, and its main metric
    beside that of each experiment with the same model on the base dataset alone."""
    made = s["data"].get("synthetic")
    if not made:
        return []
    facts = [
        f"training data: `{made['base']}`'s {made['real_train']:,} train images + "
        f"{made['generated']:,} generated by `{made['from']}` ({made['per_class']} a class); "
        "val and test are the base's real images"
    ]
    name, _ = main_metric(s)

    def interval(metrics: dict) -> tuple | None:
        ends = (metrics.get(f"{name}_ci95_low"), metrics.get(f"{name}_ci95_high"))
        return None if None in ends else ends

    for other in summaries:
        if other["dataset"] == made["base"] and other["params"]["model"] == s["params"]["model"]:
            facts.append(
                f"without the generated images (`{other['experiment']}`, same model): {name} "
                f"{with_interval(other['metrics'], name)} vs {with_interval(s['metrics'], name)}"
                " with them"
            )
            this, that = interval(s["metrics"]), interval(other["metrics"])
            if this and that:  # (a metric without a bootstrap interval: nothing to say)
                overlap = this[0] <= that[1] and that[0] <= this[1]
                facts[-1] += f"; the 95% intervals {'overlap' if overlap else 'do not overlap'}"
    return facts


def synthetic_samples(s: dict) -> Path | None:
    """The grid of generated training images of an experiment's synthetic dataset."""
    path = paths.synthetic_samples_file(s["dataset"])
    return path if s["data"].get("synthetic") and path.is_file() else None


def value(v: float) -> str:
    """A metric as the report prints it: counts as integers (`360`, not `360.0000`)."""
    if float(v).is_integer() and abs(v) >= 2:
        return f"{int(v):,}"
    return f"{v:.4f}"


def tuning_of(experiment: str) -> dict | None:
    """tune@'s summary when the experiment was tuned, else None."""
    path = paths.tuning_summary(experiment)
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("enabled", True) else None


def _tuning_facts(t: dict) -> list[str]:
    states = t["states"]
    best = t["best"]
    values = ", ".join(f"{k}={v:.4g}" for k, v in best["values"].items())
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
    )
    facts = [
        f"study `{t['study']}`: {sum(states.values())} trials ({states['COMPLETE']} complete, "
        f"{states['PRUNED']} pruned, {states['FAIL']} failed), sampler {t['sampler']}, "
        f"pruner {t['pruner']}; {t['total_epochs']} epochs in {t['seconds']:.0f} s",
        f"best trial {best['number']}: {values}; used by train: {params}",
    ]
    if "pareto_front" in t:
        facts.append(
            f"Pareto front: {len(t['pareto_front'])} trials; choice rule {t['pareto_choice']}"
        )
    return facts


def _tuning_figures(experiment: str) -> list:
    return sorted(paths.tuning_plots_dir(experiment).glob("*.png"))


def render_markdown(summaries: list[dict], links: dict[str, str] | None = None) -> str:
    lines = [
        "# Experiment report",
        "",
        f"{len(summaries)} experiments on the test split, grouped by task, best first.",
        "",
        "Contents: " + ", ".join(f"[{s['experiment']}](#{s['experiment']})" for s in summaries),
        "",
        *_grouped_line(links or {}),
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in leaderboard_rows(summaries)]
    for s in summaries:
        exp = s["experiment"]
        lines += ["", f"## {exp}", ""]
        lines += [f"![{f}](experiments/{exp}/plots/{f}.png)" for f in s["figures"]]
        samples = synthetic_samples(s)
        if samples:
            lines.append(f"![generated training images](../{samples})")
        facts = _facts(s, links or {}) + synthetic_facts(s, summaries)
        lines += [""] + [f"- {fact}" for fact in facts]
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {value(v)} |" for k, v in s["metrics"].items()]
        tuning = tuning_of(exp)
        if tuning:
            lines += ["", "### Tuning", ""] + [f"- {fact}" for fact in _tuning_facts(tuning)]
            lines += [""] + [
                f"![{f.stem}]({f.relative_to(paths.REPORTS)})" for f in _tuning_figures(exp)
            ]
        lines += ["", "```yaml", yaml.safe_dump(s["params"], sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _grouped_line(links: dict[str, str]) -> list[str]:
    if GROUPED not in links:
        return []
    return [f"[All MLflow runs, one group per pipeline run]({links[GROUPED]})", ""]


def _img(path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _code(text: str) -> str:
    """Markdown [links](url) and `code` spans to HTML."""
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', html.escape(text))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(summaries: list[dict], links: dict[str, str] | None = None) -> str:
    """One file, images embedded, no scripts or network: it opens anywhere."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
        for row in leaderboard_rows(summaries)
    )
    sections = []
    for s in summaries:
        exp = s["experiment"]
        figures = "".join(_img(paths.plots_dir(exp) / f"{f}.png") for f in s["figures"])
        samples = synthetic_samples(s)
        figures += _img(samples) if samples else ""
        metrics = "".join(
            f"<tr><td>{esc(k)}</td><td>{value(v)}</td></tr>" for k, v in s["metrics"].items()
        )
        facts = "".join(
            f"<li>{_code(f)}</li>" for f in _facts(s, links or {}) + synthetic_facts(s, summaries)
        )
        params = esc(yaml.safe_dump(s["params"], sort_keys=False))
        tuning = tuning_of(exp)
        if tuning:
            facts += "".join(f"<li>{_code(f)}</li>" for f in _tuning_facts(tuning))
            figures += "".join(_img(f) for f in _tuning_figures(exp))
        sections.append(
            f'<section id="{esc(exp)}"><h2>{esc(exp)}</h2>'
            f"{figures}<table>{metrics}</table><ul>{facts}</ul>"
            f"<details><summary>resolved params</summary><pre>{params}</pre></details></section>"
        )
    names = [esc(s["experiment"]) for s in summaries]
    toc = ", ".join(f'<a href="#{name}">{name}</a>' for name in names)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment report</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px}} .wide{{overflow-x:auto}}
th{{background:#f3f3f3}} img{{max-width:100%;margin:4px}} section{{margin-top:2em}}
</style></head><body>
<h1>Experiment report</h1>
<p>{len(summaries)} experiments on the test split, grouped by task, best first.</p>
<nav>Contents: {toc}</nav>
{"".join(f"<p>{_code(line)}</p>" for line in _grouped_line(links or {}) if line)}
<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
{"".join(sections)}
</body></html>
"""


def main(argv=None) -> int:
    return stage_main("report", run, argv, target=None, tracked=default_tracking)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
