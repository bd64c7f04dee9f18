"""The ground floor's direction: `io`, `data` and `evaluation` never import `recsys.models` at run time, and
nothing under `recsys/` imports inside a function to get round an import cycle."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import recsys

ROOT = Path(recsys.__file__).parent
BELOW_MODELS = ("io", "data", "evaluation", "contracts")
# Imported inside a function on purpose, not for a cycle: optional or heavy dependencies a caller may not
# have or want (JAX for the session model's training, the CLI's commands each importing only their own).
LAZY_ON_PURPOSE = {
    ("models/srgnn.py", "recsys.models.neural"),
    ("models/neumf.py", "recsys.models.neural"),
    ("cli.py", "*"),
}


def test_io_data_and_evaluation_do_not_import_the_models():
    modules = [
        f"recsys.{package}.{m.name}" for package in BELOW_MODELS for m in pkgutil.iter_modules([str(ROOT / package)])
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(sorted(m for m in sys.modules if m.startswith('recsys.models')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(modules) > 10 and out.strip() == "[]", out


def _function_imports(path: Path) -> list[str]:
    """The `recsys` modules imported inside a function body of `path` (not under `if TYPE_CHECKING`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("recsys"):
                    found.append(inner.module or "")
                elif isinstance(inner, ast.Import):
                    found += [a.name for a in inner.names if a.name.startswith("recsys")]
    return found


def test_no_import_inside_a_function_to_dodge_a_cycle():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        for module in _function_imports(path):
            if (name, "*") in LAZY_ON_PURPOSE or any(
                (name, m) in LAZY_ON_PURPOSE and module.startswith(m) for _, m in LAZY_ON_PURPOSE
            ):
                continue
            offenders.append(f"{name}: {module}")
    assert not offenders, offenders
