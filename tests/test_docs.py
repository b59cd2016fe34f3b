"""Every ```python block in docs/*.md runs and its assertions hold.

Each block is a complete program, executed on its own in a fresh namespace
with the repository root as working directory.  Blocks fenced as
```python context (fragments of context code) and ```text are not run; any
other qualifier after ``python`` is an error, so that nothing is skipped by
accident.  Global registries that examples extend (path types, decorator
symbols) are restored after each block.
"""

import pathlib
import re

import pytest

import metropc.core  # noqa: F401  (registers the path types, e.g. karabo#, first)
from metropc.path import Path
from metropc.viewdef import ViewDecorator

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIPPED_QUALIFIERS = {"context"}

_OPEN = re.compile(r"^(`{3,})\s*([^`]*)$")


def python_blocks(path):
    """(first line number, qualifiers, code) of every ```python block."""
    blocks, fence, info, start, lines = [], None, None, None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = _OPEN.match(stripped)
            if m is not None:
                fence, info, start, lines = m.group(1), m.group(2).split(), number + 1, []
        elif stripped.startswith(fence) and not stripped.strip("`"):
            if info and info[0] == "python":
                blocks.append((start, info[1:], "\n".join(lines) + "\n"))
            fence = None
        else:
            lines.append(line)
    assert fence is None, f"{path.name}: unterminated code block"
    return blocks


def collect():
    params = []
    for doc in sorted(DOCS.glob("*.md")):
        for line, qualifiers, code in python_blocks(doc):
            params.append(pytest.param(doc, line, qualifiers, code,
                                       id=f"{doc.name}:{line}"))
    return params


BLOCKS = collect()


def test_docs_are_collected():
    names = {p.values[0].name for p in BLOCKS}
    assert "contexts.md" in names
    # the other guides are covered whenever they exist
    for guide in ("builtin.md", "client.md"):
        if (DOCS / guide).exists() and python_blocks(DOCS / guide):
            assert guide in names
    runnable = [p for p in BLOCKS if p.values[0].name == "contexts.md" and not p.values[2]]
    assert len(runnable) >= 15


def test_block_parser(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```python\na = 1\n```\n```text\nno\n```\n"
                   "```python context\n@View.Scalar\n```\n````\n```python\nnot a block\n````\n")
    assert python_blocks(doc) == [(3, [], "a = 1\n"), (9, ["context"], "@View.Scalar\n")]


@pytest.fixture
def registries(monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = dict(Path._types)
    symbols = dict(ViewDecorator.kwargs_symbols)
    yield
    Path._types.clear()
    Path._types.update(paths)
    ViewDecorator.kwargs_symbols.clear()
    ViewDecorator.kwargs_symbols.update(symbols)


@pytest.mark.parametrize("doc, line, qualifiers, code", BLOCKS)
def test_python_block(doc, line, qualifiers, code, registries):
    unknown = set(qualifiers) - SKIPPED_QUALIFIERS
    assert not unknown, f"{doc.name}:{line}: unknown block qualifier(s) {unknown}"
    if qualifiers:
        pytest.skip(f"```python {' '.join(qualifiers)} block")
    # Pad so that tracebacks show the line numbers of the .md file.
    compiled = compile("\n" * (line - 1) + code, str(doc), "exec", dont_inherit=True)
    exec(compiled, {"__name__": f"docs_{doc.stem}_{line}"})
