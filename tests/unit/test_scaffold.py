"""`eventfold init`: names it refuses, places it will not overwrite, and what it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework import ConfigurationError
from framework.cli import main
from framework.cli.scaffold import package_name, write_project


@pytest.mark.parametrize(("name", "package"), [("shop", "shop"), ("lending-library", "lending_library"),
                                                ("Shop2", "shop2")])
def test_a_project_name_gives_its_package(name: str, package: str) -> None:
    assert package_name(name) == package


@pytest.mark.parametrize(("name", "why"), [
    ("2shop", "cannot name a project"), ("my shop", "cannot name a project"), ("", "cannot name a project"),
    ("../evil", "cannot name a project"), ("class", "would shadow"), ("json", "would shadow"),
    ("framework", "would shadow"), ("strawberry", "would shadow"), ("tests", "would shadow"),
])
def test_a_name_that_cannot_be_a_package_is_refused(name: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why):
        package_name(name)


def test_it_writes_a_project_with_no_placeholder_left(tmp_path: Path) -> None:
    written = write_project("book-club", tmp_path / "book-club")
    names = {p.relative_to(tmp_path / "book-club").as_posix() for p in written}
    assert {"pyproject.toml", "README.md", ".gitignore", "book_club/app.py", "book_club/domain.py",
            "tests/test_domain.py"} <= names
    for path in written:
        text = path.read_text()
        assert "{{" not in text and "__package__" not in text, path
    assert 'app = "book_club.app:app"' in (tmp_path / "book-club" / "pyproject.toml").read_text()


def test_it_never_writes_into_a_directory_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="already exists and is not empty: nothing written"):
        write_project("shop", tmp_path / "shop")
    assert [p.name for p in (tmp_path / "shop").iterdir()] == ["notes.txt"]


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "import"]) == 2
    assert capsys.readouterr().err == "eventfold: 'import' would shadow the module 'import': choose another name\n"
    assert main(["init", "shop"]) == 0
    assert "cd shop" in capsys.readouterr().out
    assert main(["init", "shop"]) == 2
    assert "already exists" in capsys.readouterr().err
