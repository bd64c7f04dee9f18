"""The operator's CLI: fast help (lazy imports), current settings with secrets masked, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

from recsys.settings import Settings

RECSYS = str(Path(sys.executable).parent / "recsys")


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([RECSYS, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def test_importing_the_cli_loads_no_kafka_arrow_or_settings():
    code = (
        "import sys, recsys.cli; heavy = [m for m in ('kafka', 'pyarrow', 'pydantic_settings', 'numpy', 'rich') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_answers():
    out = run("--help")
    assert out.returncode == 0 and "settings" in out.stdout and "replay" in out.stdout


def test_settings_shows_current_values_with_secrets_masked(tmp_path):
    out = run(
        "settings",
        RECSYS_ALS_RANK="32",
        RECSYS_SERVING_WRITE_TOKEN="very-secret-token-value",
        RECSYS_STATE_DIR=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split("|")[1].strip(" `"): line for line in out.stdout.splitlines() if line.startswith("| `RECSYS_")}
    assert "`32` (set)" in lines["RECSYS_ALS_RANK"] and "`64`" in lines["RECSYS_ALS_RANK"]
    assert "very-secret" not in out.stdout and "********" in lines["RECSYS_SERVING_WRITE_TOKEN"]
    assert max(len(line) for line in out.stdout.splitlines()) > 120  # one row per line, never wrapped at 80


def test_a_bad_value_is_one_line_not_a_traceback():
    out = run("settings", RECSYS_ALS_RANK="abc")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "recsys: invalid setting RECSYS_ALS_RANK='abc': Input should be a valid integer, unable to parse string as an "
        "integer"
    ]


def test_a_relative_state_dir_is_made_absolute_once(tmp_path, monkeypatch):
    from infra.airflow import airflow_env

    monkeypatch.chdir(tmp_path)
    s = Settings(state_dir=Path(".state/demo"))
    assert s.state_dir == tmp_path.resolve() / ".state" / "demo"
    url = airflow_env(s)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert url == f"sqlite:///{tmp_path.resolve()}/.state/demo/airflow/airflow.db"
