"""The page `dvc plots show` writes, with vega bundled so that it draws offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN; without a network every
interactive plot (learning curves, confusion matrices) is blank. `make install` runs
`python -m pipeline.offline_plots`, which fetches the three from the npm registry once (pinned
versions, checked against the registry's sha512) and writes .dvc/plots/page.html with them
inline; .dvc/config points DVC's `plots.html_template` at it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

from pipeline import atomic

PAGE = Path(".dvc/plots/page.html")
REGISTRY = "https://registry.npmjs.org"
# the versions DVC's page names, brought up to the last vega 5 / vega-lite 5 releases
# (the specs DVC writes are vega-lite v5); the integrity strings are npm's
PACKAGES = {
    "vega": (
        "5.30.0",
        "sha512-ZGoC8LdfEUV0LlXIuz7hup9jxuQYhSaWek2M7r9dEHAPbPrzSQvKXZ0BbsJbrarM100TGRpTVN/l1AFxCwDkWw==",
    ),
    "vega-lite": (
        "5.21.0",
        "sha512-hNxM9nuMqpI1vkUOhEx6ewEf23WWLmJxSFJ4TA86AW43ixJyqcLV+iSCO0NipuVTE0rlDcc2e8joSewWyOlEwA==",
    ),
    "vega-embed": (
        "6.26.0",
        "sha512-AZCTdKHDAuhp6TFZRQOOs332tStCwZr/5e4uZMNEuJL69A57cT66NNZJdNiCP6u66REzIToYtMJhMTL9wl5B3A==",
    ),
}

# dvc_render fills {refresh_tag} and {plot_divs}; with no {scripts} in the page, the CDN
# tags it would add are left out
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
<!-- scripts -->
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, integrity: str) -> str:
    """The package's minified browser build, from its registry tarball."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as err:
        raise SystemExit(f"error: offline_plots: cannot fetch {url}: {err}") from err
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"error: offline_plots: {url} does not match its pinned sha512")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(f"package/build/{name}.min.js")
        return member.read().decode()


def page(scripts: dict[str, str]) -> str:
    tags = "\n".join(
        f'    <script type="text/javascript">/* {name} */\n{js}\n    </script>'
        for name, js in scripts.items()
    )
    # DVC's page calls vegaEmbed(id, spec): draw as SVG (marks are elements a test, a screen
    # reader or a copy-paste can reach) and leave out the "open in editor" link, a network site
    svg = (
        '    <script type="text/javascript">\n'
        "    const embed = vegaEmbed;\n"
        "    window.vegaEmbed = (el, spec, opt) =>\n"
        '        embed(el, spec, {renderer: "svg", actions: {export: true, source: true,'
        " compiled: false, editor: false}, ...opt});\n"
        "    </script>"
    )
    return TEMPLATE.replace("<!-- scripts -->", tags + "\n" + svg)


def main() -> int:
    scripts = {name: fetch(name, *pinned) for name, pinned in PACKAGES.items()}
    atomic.write_text(PAGE, page(scripts))
    print(f"offline_plots: wrote {PAGE} ({PAGE.stat().st_size // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
