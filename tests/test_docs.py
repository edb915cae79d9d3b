"""The documentation stays true to the code: the params reference is the schema's, and the
README stays a short entry point whose links all resolve."""

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_docs_params_md_is_what_the_schema_generates():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "params-doc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    current = (ROOT / "docs" / "params.md").read_text()
    assert proc.stdout == current, "run: python -m pipeline params-doc > docs/params.md"
    # every family and every dataset source is documented, with its keys' defaults
    for title in ("`defaults.model` with `name: diffusion`", "with `source: image_folder`"):
        assert title in current
    row = "| `hidden_sizes` | list of int | `[256, 128]` | each >= 1 | widths of the hidden layers"
    assert row in current


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/params.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_readme_params_example_is_a_valid_params_file(tmp_path):
    from pipeline.config import load_params

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "params.yaml").write_text(example)
    params = load_params(tmp_path / "params.yaml")
    assert params.experiments["cnn_digits"].tune.enabled
    assert params.schedule.cron == "0 3 * * *"


def test_cli_help_says_what_the_commands_are_for():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "The pipeline's own commands beside DVC's" in proc.stdout
    assert "docs/params.md" in proc.stdout


def test_readme_exp_run_sets_keys_the_shipped_params_hold():
    """`dvc exp run -S key=value` fails on a key params.yaml lacks (without DVC's `+` form):
    every key the README sets this way is one the shipped params.yaml holds."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    keys = re.findall(r"dvc exp run -S '?([\w.]+)=", readme)
    assert keys, "the README shows no `dvc exp run -S`"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in keys:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key}: {part!r} not in params.yaml"
            node = node[part]
