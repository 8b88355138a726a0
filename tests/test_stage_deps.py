"""Each DVC stage lists, as its code deps, exactly the src/ptdefense modules that its script imports.

The import closure is read from the code with `ast`: every `import` and `from … import` of a
ptdefense module, at module level or inside functions (a stage imports torch-heavy modules only after
its params validate), followed transitively, with the package `__init__.py` files that importing a
module runs. Imports under `if TYPE_CHECKING:` never run, so they do not count. A directory in
dvc.yaml stands for every .py file below it.

`python tests/test_stage_deps.py` prints each stage's deps as dvc.yaml should list them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "ptdefense"

# Modules a stage imports but whose edits cannot change its outputs, so DVC need not re-run it.
EXEMPT = {
    # Only logs to MLflow (runs, params, metrics, artifacts): none of it is a DVC output, and a store
    # that cannot be reached is a warning, not a change of results.
    "src/ptdefense/tracking.py": "MLflow logging only",
    "src/ptdefense/model_logging.py": "MLflow models, dataset inputs and the registry only",
}


def _module_file(name: str) -> Path | None:
    """The file of module `name` (ptdefense.x.y), or None when it is not a module of the package."""
    if name != "ptdefense" and not name.startswith("ptdefense."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """The ptdefense modules that the file imports anywhere, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(child) for node in ast.walk(tree) if _type_checking_only(node)
               for statement in node.body for child in ast.walk(statement)}
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {module for name in found for module in _with_parents(name) if _module_file(module) is not None}


def import_closure(script: Path) -> set[str]:
    """Repository-relative paths of every ptdefense module that running `script` can import."""
    seen: set[str] = set()
    pending = list(imported_modules(script))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(imported_modules(_module_file(name)))
    return {_module_file(name).relative_to(ROOT).as_posix() for name in seen}


def listed_code_deps(deps: list[str]) -> set[str]:
    """The src/ptdefense .py files that a stage's dvc.yaml deps name (a directory: every file below it)."""
    files: set[str] = set()
    for dep in deps:
        if not dep.startswith("src/"):
            continue
        path = ROOT / dep
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        files.update(file.relative_to(ROOT).as_posix() for file in found)
    return files


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def script_of(stage: dict) -> Path:
    return ROOT / stage["cmd"].split()[-1]


def expected_deps(stage: dict) -> set[str]:
    return import_closure(script_of(stage)) - set(EXEMPT)


def compressed(files: set[str]) -> list[str]:
    """The files as dvc.yaml lists them: a directory where every .py file below it is needed."""
    result: set[str] = set(files)
    for directory in sorted({str(Path(f).parent) for f in files}, key=len):
        below = {p.relative_to(ROOT).as_posix() for p in (ROOT / directory).rglob("*.py")}
        inside_listed = any(directory.startswith(listed + "/") for listed in result if not listed.endswith(".py"))
        if directory != "src/ptdefense" and below and below <= files and not inside_listed:
            result = {f for f in result if not f.startswith(directory + "/")} | {directory}
    return sorted(result)


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_deps_are_the_stage_scripts_import_closure(name):
    stage = stages()[name]
    assert script_of(stage).as_posix().removeprefix(ROOT.as_posix() + "/") in stage["deps"], "the script itself"
    listed, needed = listed_code_deps(stage["deps"]), expected_deps(stage)
    assert not needed - listed, f"{name}: dvc.yaml misses modules the stage imports: {sorted(needed - listed)}"
    assert not listed - needed, f"{name}: dvc.yaml lists modules the stage never imports: {sorted(listed - needed)}"


def test_the_closure_follows_function_level_and_from_imports(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import sys\n"
                      "from ptdefense.stage import run_stage\n"
                      "def main():\n"
                      "    from ptdefense import paths\n"
                      "    from ptdefense.attacks.registry import build_attack\n"
                      "from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n"
                      "    from ptdefense.evaluation import comparison_table\n")
    closure = import_closure(script)
    # function-level, `from package import module`, and transitive (stage -> params -> attacks.settings)
    for module in ("paths.py", "attacks/wanet.py", "params.py", "attacks/settings.py", "__init__.py",
                   "attacks/__init__.py", "data/errors.py"):
        assert f"src/ptdefense/{module}" in closure, module
    assert "src/ptdefense/evaluation.py" not in closure  # TYPE_CHECKING only


if __name__ == "__main__":
    for stage_name, stage_spec in stages().items():
        print(f"{stage_name}:")
        for dep in compressed(expected_deps(stage_spec)):
            print(f"      - {dep}")
    sys.exit(0)
