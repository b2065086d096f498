"""The documentation site builds offline with `mkdocs build --strict`: a broken link, a missing anchor or a
page left out of the nav fails the build (see the `validation` settings in mkdocs.yml)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REMOTE_ASSET = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return site


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").exists()
    assert (site / "tutorial" / "index.html").exists()
    assert (site / "errors" / "index.html").exists()


def test_the_api_reference_is_generated_from_the_public_modules(site: Path) -> None:
    page = (site / "api-reference" / "index.html").read_text()
    for documented in ["App", "build_projectors", "CommandRouter", "ProcessManager", "paginate", "GraphQLSpec",
                       "CommandSpec", "Seeding"]:
        assert f">{documented}<" in page or f"{documented}</" in page, documented
    assert "Fresh projector instances, checked and with unique names." in page


def test_site_loads_nothing_from_the_internet(site: Path) -> None:
    remote = [p.relative_to(site).as_posix() for p in site.rglob("*.html") if REMOTE_ASSET.search(p.read_text())]
    assert not remote, f"pages loading remote scripts, styles or images: {remote}"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in nav] == []
