"""The documentation site: it builds with `mkdocs build --strict` (every warning an error), its
reference tables come from the models' fields, its API pages from the docstrings; and the README,
which points to it, stays short."""

import dataclasses
import html
import importlib
import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from rst_tune.config import TrainConfig
from rst_tune.search import SearchSpec
from rst_tune.study import StudySpec

ROOT = Path(__file__).parent.parent
PACKAGES = (
    "rst_tune",
    "rst_tune.api",
    "rst_tune.search",
    "rst_tune.study",
    "rst_tune.tracking",
    "rst_tune.methods",
)
API_PAGES = dict(zip(PACKAGES, ("rst_tune", "api", "search", "study", "tracking", "methods")))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its end of life
    env.pop("RST_TUNE_DATA", None)  # the reference shows data_dir's own default
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out


def _text(fragment: str) -> str:
    """HTML as the reader sees it: no tags (a block's end a space), entities decoded, whitespace collapsed."""
    spaced = re.sub(r"</?(p|div|h[1-6]|li|ul|ol|td|th|tr|table|pre|br|hr|dt|dd)\b[^>]*>", " ", fragment)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", spaced)).split())


def _plain(markdown: str) -> str:
    """Markdown text as it reads once rendered (code spans lose their backticks)."""
    return " ".join(markdown.replace("`", "").split())


def _page(site: Path, path: str) -> str:
    page = (site / path / "index.html").read_text()
    return page[page.index("<article") : page.index("</article>")]


def _tables(page: str) -> dict[str, dict[str, list[str]]]:
    """The table of each section of a page, by its heading's id ("" before the first): key (the first
    cell) -> the row's cells as text."""
    tables = {}
    for section in re.split(r"(?=<h2 )", page):
        heading = re.match(r'<h2 id="([^"]*)"', section)
        for table in re.findall(r"<table>(.*?)</table>", section, re.S):
            rows = [
                re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
                for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
            ]
            tables[heading[1] if heading else ""] = {
                _text(cells[0]): [_text(cell) for cell in cells] for cells in rows if cells
            }
    return tables


def _nested(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The models `model`'s fields take (directly or as `X | None`), by field."""
    return {
        name: candidate
        for name, field in model.model_fields.items()
        for candidate in (field.annotation, *typing.get_args(field.annotation))
        if isinstance(candidate, type) and issubclass(candidate, BaseModel)
    }


def _rows_of(model: type[BaseModel]) -> dict[str, str]:
    return {name: _plain(field.description or "") for name, field in model.model_fields.items()}


def _dimension() -> type[BaseModel]:
    """What a searched key under `space` is, as SearchSpec's `dimensions` says."""
    return typing.get_args(typing.get_type_hints(SearchSpec.dimensions.fget)["return"])[1]


@pytest.mark.parametrize(
    "page, model",
    [
        ("reference/train-config", TrainConfig),
        ("reference/search-file", SearchSpec),
        ("reference/study-file", StudySpec),
    ],
)
def test_the_reference_holds_every_key_with_its_description(site, page, model):
    tables = _tables(_page(site, page))
    sections = {"": model, **_nested(model)}  # the model's table first, then one per nested model
    if model is SearchSpec:  # and what a key under `space` is
        keys = set(_dimension().model_fields)
        sections[next(anchor for anchor, table in tables.items() if set(table) == keys)] = _dimension()
    assert set(tables) == set(sections)
    for anchor, each in sections.items():
        expected = _rows_of(each)
        assert all(expected.values()), f"{each.__name__}: a field without a description"
        assert {key: row[-1] for key, row in tables[anchor].items()} == expected  # every key, its description


def test_the_reference_gives_types_and_defaults(site):
    rows = _tables(_page(site, "reference/train-config"))[""]
    assert rows["label_noise"][1:3] == ["number, ≥ 0, ≤ 1", "0.0"]
    assert rows["lr_schedule"][1:3] == ["cosine or constant", "cosine"]
    assert rows["grst_weight"][1:3] == ["number or null, ≥ 0", "null"]
    assert rows["schedule"][1] == "mapping: ScheduleConfig"
    search = _tables(_page(site, "reference/search-file"))[""]
    assert search["sampler"][1:3] == ["mapping: Sampler", "its keys' defaults"]
    assert search["objective"][1:3] == ["pareto, acc_per_prop or accuracy_under_budget", "pareto"]
    study = _tables(_page(site, "reference/study-file"))[""]
    assert study["configurations"][1:3] == ["list of mappings, not empty", "required"]


def _own_doc(obj: object) -> str | None:
    """The first paragraph of the docstring `obj` was written with (none for a plain value)."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)) or not obj.__doc__:
        return None
    if dataclasses.is_dataclass(obj) and obj.__doc__.startswith(f"{obj.__name__}("):
        return None  # the signature a dataclass without a docstring is given
    return _plain(inspect.cleandoc(obj.__doc__).split("\n\n")[0])


def test_the_api_pages_come_from_the_docstrings(site):
    from rst_tune import api

    for package, path in API_PAGES.items():
        page = _page(site, f"api/{path}")
        text = _text(page)
        module = importlib.import_module(package)
        for name in ["", *module.__all__]:  # the package's docstring, then each public name's
            doc = _own_doc(getattr(module, name) if name else module)
            assert doc is None or doc in text, (package, name)
        for name in module.__all__:  # a class under the package's name
            assert not inspect.isclass(getattr(module, name)) or f'id="{package}.{name}"' in page, name
        assert not re.search(r'id="rst_tune\.(search|study|tracking|data)\.[a-z_]+\.', page)  # not a module's
    assert _plain(inspect.getdoc(api.search)) in _text(_page(site, "api/api"))


def test_the_readme_is_short_and_starts_with_the_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert lines[:3] == ["# rst-tune", "", "```bash"]
    assert lines[3].startswith('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"')
    assert lines[4].startswith("rst-tune search ")
    assert lines[5].startswith("python -m pytest -q ")  # the command CI runs
    assert lines[6] == "```"


def test_the_readme_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert any(target.startswith("docs/") for target in targets)
    assert [target for target in targets if "://" not in target and not (ROOT / target).exists()] == []
