"""Every ```python block in the README and docs/ runs, file by file, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _samples(path: Path) -> str:
    return "\n".join(BLOCK.findall(path.read_text()))


@pytest.mark.parametrize(
    "document", [d for d in DOCUMENTS if _samples(d)], ids=lambda d: d.relative_to(ROOT).as_posix()
)
def test_code_samples_run(document: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _samples(document)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_documents_with_samples_exist() -> None:
    assert sum(1 for d in DOCUMENTS if _samples(d)) >= 3


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_local_links_resolve(document: Path) -> None:
    targets = [t for t in LINK.findall(document.read_text()) if "://" not in t]
    missing = [t for t in targets if not (document.parent / t).exists()]
    assert not missing, f"{document.name} links to missing files: {missing}"
