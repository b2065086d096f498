"""Finding the application by one reference, and every way a reference can be wrong in one line."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import App, CommandRouter, ConfigurationError
from framework.cli import main
from framework.loading import find_app_reference, load_app

APP_MODULE = """
from framework import App, CommandRouter
from framework.projector import Projector

class Nothing(Projector):
    name = "nothing"
    read_models = ()

router = CommandRouter()
app = App(name="{name}", commands=router, projections=[Nothing])

def make_app():
    return App(name="{name}-made", commands=router)

def not_an_app():
    return router

def broken():
    raise RuntimeError("database password missing")
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's directory with its own package, the current directory as a user would have it."""
    package = tmp_path / f"shop_{tmp_path.name[-6:].replace('-', '_')}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(APP_MODULE.format(name=package.name))
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(package.name):
            del sys.modules[name]


def _package(project: Path) -> str:
    (found,) = [p.name for p in project.iterdir() if p.name.startswith("shop_")]
    return found


def test_an_app_in_the_current_directory_loads_without_pythonpath(project: Path) -> None:
    name = _package(project)
    app = load_app(f"{name}.app:app")
    assert isinstance(app, App) and app.name == name
    assert [p.name for p in app.build_projectors()] == ["nothing"]


def test_the_attribute_defaults_to_app_and_a_factory_is_called(project: Path) -> None:
    name = _package(project)
    assert load_app(f"{name}.app").name == name
    assert load_app(f"{name}.app:make_app").name == f"{name}-made"


@pytest.mark.parametrize(("reference", "message"), [
    ("nowhere_at_all.app:app", "no module named 'nowhere_at_all'"),
    ("{pkg}.app:missing", "has no 'missing'"),
    ("{pkg}.app:not_an_app", "is a CommandRouter, not an App"),
    ("{pkg}.app:router", "is a CommandRouter, not an App"),
    ("{pkg}.app:broken", "RuntimeError: database password missing"),
    ("not a reference", "must look like 'package.module:app'"),
    (":app", "must look like 'package.module:app'"),
])
def test_a_wrong_reference_is_one_clear_line(project: Path, reference: str, message: str) -> None:
    reference = reference.format(pkg=_package(project))
    with pytest.raises(ConfigurationError) as refused:
        load_app(reference)
    assert message in refused.value.message and "\n" not in refused.value.message
    assert f"EVENTFOLD_APP={reference!r}" in refused.value.message


def test_an_error_inside_the_users_module_names_the_file_and_line(project: Path) -> None:
    (project / "faulty.py").write_text("import os\nvalue = 1 / 0\n")
    with pytest.raises(ConfigurationError, match=r"ZeroDivisionError: division by zero \(.*faulty.py:2\)"):
        load_app("faulty:app")


def test_a_missing_dependency_of_the_users_module_is_not_called_a_missing_app(project: Path) -> None:
    (project / "needs_more.py").write_text("import a_package_nobody_installed\n")
    with pytest.raises(ConfigurationError, match=r"failed to import: ModuleNotFoundError: .*a_package_nobody"):
        load_app("needs_more:app")


def test_the_flag_wins_over_the_variable_which_wins_over_pyproject(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.eventfold]\napp = "from_pyproject:app"\n')
    assert find_app_reference("flag:app", "variable:app", project) == ("flag:app", "--app")
    assert find_app_reference(None, "variable:app", project) == ("variable:app", "EVENTFOLD_APP")
    assert find_app_reference(None, None, project) == ("from_pyproject:app", "[tool.eventfold] app")


def test_without_any_reference_the_error_says_the_three_ways(project: Path) -> None:
    expected = r"no application given: name one with --app .*EVENTFOLD_APP.*pyproject"
    with pytest.raises(ConfigurationError, match=expected):
        find_app_reference(None, None, project)


@pytest.mark.parametrize("content", ['[tool.eventfold]\napp = 3\n', "[tool.eventfold\n"])
def test_a_broken_pyproject_is_named(project: Path, content: str) -> None:
    (project / "pyproject.toml").write_text(content)
    with pytest.raises(ConfigurationError, match=r"pyproject\.toml"):
        find_app_reference(None, None, project)


def test_the_cli_says_in_one_line_that_no_application_was_given(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EVENTFOLD_APP", raising=False)
    assert main(["dev", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eventfold: no application given"), err


def test_seed_without_a_seed_function_is_refused_before_serving(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EVENTFOLD_APP", raising=False)
    name = _package(project)
    assert main(["dev", "--seed", "--store", ":memory:", "--app", f"{name}.app:app"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"eventfold: --seed: application {name!r} declares no seed function (App(seed=...))")


def test_an_app_checks_what_it_is_given() -> None:
    with pytest.raises(ConfigurationError, match="must be a CommandRouter"):
        App(commands="router")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="projector classes"):
        App(commands=CommandRouter(), projections=["holdings"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="declares no GraphQL schema"):
        App(commands=CommandRouter()).build_graphql()


def test_two_projections_of_one_name_are_refused() -> None:
    from framework.projector import Projector

    class One(Projector):
        name = "same"
        read_models = ()

    with pytest.raises(ConfigurationError, match="two projections are named 'same'"):
        App(commands=CommandRouter(), projections=[One, One]).build_projectors()


def test_the_example_is_not_installed_with_the_framework() -> None:
    """The distribution holds `framework` only: the example is found through the repository."""
    import framework

    assert Path(framework.__file__).parent.name == "framework"
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'include = ["framework*"]' in text
    loaded = textwrap.dedent("""
        import sys, framework, framework.cli, framework.cli.serve, framework.cli.stream, framework.cli.operate
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('example_app', 'projections')))
    """)
    import subprocess

    done = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
