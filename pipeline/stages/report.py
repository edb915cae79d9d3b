"""report: reports/index.md and a self-contained reports/index.html for all experiments."""

from __future__ import annotations

import base64
import html
import json
import sys

import yaml

from pipeline import atomic, paths, tracking
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.stages import stage_main

MAIN_METRIC = "test/accuracy"
COLUMNS = (
    "experiment",
    "model",
    "dataset",
    MAIN_METRIC,
    "test/f1_macro",
    "parameters",
    "train seconds",
    "samples/s",
    "device",
)


def run(params: Params, _name=None) -> list[dict]:
    summaries = []
    for experiment in params.experiments:
        path = paths.summary_file(experiment)
        if not path.is_file():
            raise PipelineError(f"{path} not found; run `dvc repro evaluate@{experiment}` first")
        summaries.append(json.loads(path.read_text()))
    summaries.sort(key=lambda s: -s["metrics"].get(MAIN_METRIC, 0.0))
    with tracking.stage_run(
        params.defaults.tracking, name="report", tags={"stage": "report"}
    ) as run:
        atomic.write_text(paths.REPORT_MD, render_markdown(summaries))
        atomic.write_text(paths.REPORT_HTML, render_html(summaries))
        run.log_artifact(paths.REPORT_HTML)
        run.log_metrics(
            {f"{s['experiment']}/{MAIN_METRIC}": s["metrics"][MAIN_METRIC] for s in summaries}
        )
    return summaries


def leaderboard_rows(summaries: list[dict]) -> list[list[str]]:
    rows = []
    for s in summaries:
        m, t = s["metrics"], s["train"]
        rows.append(
            [
                s["experiment"],
                s["model"],
                s["dataset"],
                f"{m[MAIN_METRIC]:.4f}",
                f"{m['test/f1_macro']:.4f}",
                f"{t['parameters']:,}",
                f"{t['train_seconds']:.1f}",
                f"{t['samples_per_second']:,.0f}",
                t["device"],
            ]
        )
    return rows


def render_markdown(summaries: list[dict]) -> str:
    lines = [
        "# Experiment report",
        "",
        f"{len(summaries)} experiments, best first by {MAIN_METRIC} (test split).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in leaderboard_rows(summaries)]
    for s in summaries:
        exp = s["experiment"]
        lines += [
            "",
            f"## {exp}",
            "",
            f"![curves](experiments/{exp}/plots/curves.png)",
            f"![confusion](experiments/{exp}/plots/confusion.png)",
            "",
            f"- MLflow runs: train `{s['train']['mlflow_run_id']}`, "
            f"evaluate `{s['evaluate_run_id']}`",
            f"- data: `{s['dataset']}` dvc hash `{s['data']['dvc_hash']}`, "
            f"split sizes {s['data']['counts']}",
            f"- best epoch {s['train']['best_epoch']} of {s['train']['epochs_run']}"
            + (" (stopped early)" if s["train"]["stopped_early"] else ""),
            "",
            "```yaml",
            yaml.safe_dump(s["params"], sort_keys=False).rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def _img(path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(summaries: list[dict]) -> str:
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
        metrics = "".join(
            f"<tr><td>{esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in s["metrics"].items()
        )
        sections.append(
            f"<section><h2>{esc(exp)}</h2>"
            f"{_img(paths.curves_png(exp))}{_img(paths.confusion_png(exp))}"
            f"<table>{metrics}</table>"
            f"<p>MLflow runs: train <code>{esc(s['train']['mlflow_run_id'])}</code>, "
            f"evaluate <code>{esc(s['evaluate_run_id'])}</code>. Data: <code>{esc(s['dataset'])}"
            f"</code>, DVC hash <code>{esc(s['data']['dvc_hash'])}</code>, "
            f"split sizes {esc(str(s['data']['counts']))}.</p>"
            f"<details><summary>resolved params</summary><pre>"
            f"{esc(yaml.safe_dump(s['params'], sort_keys=False))}</pre></details></section>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment report</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:4px 8px}}
th{{background:#f3f3f3}} img{{max-width:100%;margin:4px}} section{{margin-top:2em}}
</style></head><body>
<h1>Experiment report</h1>
<p>{len(summaries)} experiments, best first by {MAIN_METRIC} (test split).</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{"".join(sections)}
</body></html>
"""


def main(argv=None) -> int:
    return stage_main("report", run, argv, target=None)


if __name__ == "__main__":
    sys.exit(main())
