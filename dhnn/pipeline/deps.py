"""Which dhnn modules each stage's notebook imports, directly or not: dvc.yaml's code dependencies.

Imports are read from the source (every ``import`` statement, also inside functions), plus module
names written as strings (the registries import their data sources lazily by name). Importing a
module runs its packages' ``__init__`` files too, so they count. ``python -m dhnn.pipeline.deps``
prints each stage's list and ``--write`` puts them into dvc.yaml; ``tests/test_deps.py`` fails when
dvc.yaml differs from them.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
MODULE_NAME = re.compile(r"^dhnn(\.[A-Za-z_]\w*)+$")
# stage name in dvc.yaml -> what it runs: a notebook (through the runner), or a dhnn module run with python -m
STAGES = {"fetch": "dhnn/pipeline/fetch.py", "nbcode": "dhnn/pipeline/nbcode.py",
          "taxonomy": "notebooks/00_taxonomy.ipynb", "train": "notebooks/01_train.ipynb",
          "infer": "notebooks/02_infer.ipynb", "report": "notebooks/03_report.ipynb"}
RUNNER = "dhnn.pipeline.run"  # each notebook stage's cmd: `python -m dhnn.pipeline.run NOTEBOOK ...`
# Code that a notebook reaches only when opened on its own (it builds the demo, with every stage's code):
# no stage runs it, and it refuses to run where the runner set DHNN_STAGE, so it is no stage's dependency.
NOT_IN_STAGES = frozenset({"dhnn.pipeline.demo"})


def module_file(name: str) -> Path | None:
    """The source file of a dhnn module or package, or None if it is not one."""
    parts = name.split(".")
    if parts[0] != "dhnn":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _name_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str = "", is_package: bool = False, strings: bool = True) -> set[str]:
    """The dhnn modules that ``source`` (the code of ``module``) names in imports or (``strings``) as strings.

    A module named in a string runs too (a registry imports it by name, a stage launches it with
    ``python -m``), so the dependencies count it; an import cycle is about import statements alone.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value):
            found.add(node.value)
    return {name for name in found if module_file(name) is not None}


def _with_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(roots: set[str], skip: frozenset[str] = frozenset()) -> set[str]:
    """Every dhnn module that importing ``roots`` runs, not following into ``skip``."""
    todo, seen = [m for r in roots for m in _with_packages(r)], set()
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        path = module_file(name)
        for dep in imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            todo.extend(_with_packages(dep))
    return seen


def notebook_modules(notebook: str | Path) -> set[str]:
    """The dhnn modules that running a notebook as a stage runs: the runner's, and those its code imports."""
    from .nbcode import notebook_code

    return closure(imports_of(notebook_code(notebook)) | {RUNNER}, NOT_IN_STAGES)


def stage_files(source: str | Path) -> list[str]:
    """The dhnn source files a stage runs (a notebook, or a dhnn module), as dvc.yaml lists them."""
    source = Path(source)
    modules = notebook_modules(source) if source.suffix == ".ipynb" else closure(
        {_name_of(source.resolve())}, NOT_IN_STAGES)
    return sorted(str(module_file(m).relative_to(PACKAGE.parent)) for m in modules)


def rewrite(dvc_yaml: str) -> str:
    """``dvc_yaml`` with each notebook stage's ``- dhnn/...`` lines replaced by the computed list."""
    root, out, stage, pending = PACKAGE.parent, [], None, []
    for line in dvc_yaml.splitlines(keepends=True):
        if header := re.match(r"^  ([A-Za-z_]+):\s*(#.*)?$", line):
            stage = header.group(1)
            pending = stage_files(root / STAGES[stage]) if stage in STAGES else []
        if stage in STAGES and re.match(r"^\s+- dhnn/", line):
            indent = line[: line.index("-")]
            out.extend(f"{indent}- {f}\n" for f in pending)  # the whole list at the first old line
            pending = []
            continue
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print every stage's dhnn dependencies, or with --write update dvc.yaml's lists in place."""
    args = sys.argv[1:] if argv is None else argv
    root = PACKAGE.parent
    if args == ["--write"]:
        path = root / "dvc.yaml"
        path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {path}")
        return 0
    for stage, source in STAGES.items():
        print(f"{stage}:")
        for f in stage_files(root / source):
            print(f"  - {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
