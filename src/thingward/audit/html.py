"""The audit report as one self-contained HTML file (no scripts, no external resources) for people."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from thingward.audit.model import SEVERITIES

PARTS = ("device", "network", "cloud", "app")
COLOURS = {"critical": "#8b0000", "high": "#c0392b", "medium": "#c27c0e", "low": "#2e6f9e"}
STANDARD_NAMES = {"etsi_en_303_645": "ETSI EN 303 645", "owasp_iot_top10": "OWASP IoT", "uk_psti": "UK PSTI"}

_env = Environment(loader=PackageLoader("thingward.audit", "templates"), autoescape=select_autoescape(default=True))


def render_html(report: dict[str, Any]) -> str:
    by_part = {part: {severity: 0 for severity in SEVERITIES} for part in PARTS}
    for check in report["checks"]:
        for finding in check["findings"]:
            by_part[check["part"]][finding["severity"]] += 1
    widest = max((sum(counts.values()) for counts in by_part.values()), default=0)
    scale = 520 / widest if widest else 0
    changes = report.get("changes") or {}
    new_ids = {finding["id"] for finding in changes.get("new", [])}
    return _env.get_template("report.html.j2").render(
        report=report,
        severities=SEVERITIES,
        parts=PARTS,
        by_part=by_part,
        scale=scale,
        colours=COLOURS,
        names=STANDARD_NAMES,
        new_ids=new_ids,
    )
