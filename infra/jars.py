"""Jars from Maven Central, fetched once at set-up and never at run time.

Each component has a small pom under `infra/maven/<component>/pom.xml` that pins
released versions (and the plugin that copies them). `fetch` runs
`mvn dependency:copy-dependencies` into `.jars/<component>/` (git-ignored) and
records the pom's hash there, so the folder is re-used until the pom changes.

    python -m infra.jars fetch            # every component (make does this)
    python -m infra.jars classpath kafka  # the jars of one component, ':'-joined
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from recsys.settings import PROJECT_ROOT

POMS = PROJECT_ROOT / "infra" / "maven"
JARS = PROJECT_ROOT / ".jars"
STAMP = ".pom.sha256"

app = typer.Typer(
    help="Jars from Maven Central.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)


class JarsMissing(RuntimeError):
    """A component's jars are not fetched (run `make jars`)."""


def components() -> list[str]:
    return sorted(p.parent.name for p in POMS.glob("*/pom.xml"))


def folder(component: str) -> Path:
    return JARS / component


def _pom_hash(component: str) -> str:
    return hashlib.sha256((POMS / component / "pom.xml").read_bytes()).hexdigest()


def is_fresh(component: str) -> bool:
    stamp = folder(component) / STAMP
    return stamp.exists() and stamp.read_text().strip() == _pom_hash(component)


def jars(component: str) -> list[Path]:
    """The fetched jars of a component; raises JarsMissing with what to run if they are not there."""
    if not is_fresh(component):
        raise JarsMissing(f"the {component} jars are not fetched (or their pom changed): run `make jars`")
    return sorted(folder(component).glob("*.jar"))


def classpath(component: str) -> str:
    return ":".join(str(j) for j in jars(component))


def check_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} not found: install a JDK (17+) and Maven 3.8+ "
            "(Debian: apt-get install openjdk-17-jdk-headless maven)"
        )


def fetch(component: str) -> float:
    """Copy the component's dependencies into its folder unless they are there already. Returns seconds spent."""
    if is_fresh(component):
        return 0.0
    check_tools()
    started = time.monotonic()
    target = folder(component)
    tmp = target.with_name(f".{component}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(POMS / component / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"fetching the {component} jars failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    (tmp / STAMP).write_text(_pom_hash(component))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # the folder appears whole or not at all
    return time.monotonic() - started


@app.command("fetch")
def fetch_cmd(names: Annotated[list[str] | None, typer.Argument(help="Components (default: all).")] = None) -> None:
    """Fetch the jars of the components whose folder is missing or whose pom changed."""
    for name in names or components():
        seconds = fetch(name)
        n = len(jars(name))
        typer.echo(f"jars {name}: {n} in {folder(name)}" + (f" (fetched in {seconds:.0f} s)" if seconds else ""))


@app.command("classpath")
def classpath_cmd(name: str) -> None:
    """Print a component's classpath."""
    try:
        typer.echo(classpath(name))
    except JarsMissing as e:
        typer.secho(str(e), fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    app()
