"""MkDocs hook: pages made from the runs the repository keeps, never copied by hand into docs/.

Each committed example report (loadtest/example-report*/, iolab/example-report/) becomes a page under reports/,
with its charts beside it and its own first heading (which carries the run's date) as its title; the landing
page's screenshot is served from where nginx keeps it. A re-run report committed in place updates the site."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# site path of the report → the directory that holds its report.md and charts
REPORTS = {
    "reports/compare": ROOT / "loadtest" / "example-report",
    "reports/compare-wsgi": ROOT / "loadtest" / "example-report-wsgi",
    "reports/iolab": ROOT / "iolab" / "example-report",
}
STATIC = {"img/landing-page.png": ROOT / "nginx" / "landing-page.png"}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for site_dir, source in REPORTS.items():
        files.append(File.generated(config, f"{site_dir}/index.md", abs_src_path=str(source / "report.md")))
        for chart in sorted(source.glob("*.png")):
            files.append(File.generated(config, f"{site_dir}/{chart.name}", abs_src_path=str(chart)))
    for uri, source in STATIC.items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
