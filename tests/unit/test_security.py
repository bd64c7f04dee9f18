"""Security settings that must hold on every checkout: no secrets in the repository, safe defaults, Airflow login on."""

import re
import subprocess

import pytest

from recsys.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.reliability
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),  # GitHub token
    re.compile(r"xox[baprs]-[A-Za-z0-9-]{10,}"),  # Slack token
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_no_secret_files_or_keys_are_tracked():
    files = tracked_files()
    assert files, "not a git checkout"
    secret_files = [
        f for f in files if "/secrets/" in f"/{f}" or f.endswith((".key", ".pem", ".token", "/.env")) or f == ".env"
    ]
    assert not secret_files
    leaks = []
    for name in files:
        path = PROJECT_ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            text = path.read_text(errors="ignore")
            leaks += [(name, p.pattern) for p in SECRET_PATTERNS if p.search(text)]
    assert not leaks


def test_where_secrets_live_is_ignored_by_git():
    ignored = subprocess.run(
        ["git", "check-ignore", ".state/secrets/serving.token", "infra/deploy/.env"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == [".state/secrets/serving.token", "infra/deploy/.env"]


def test_defaults_bind_loopback_and_ship_no_token_or_key(monkeypatch):
    for name in ("RECSYS_SERVING_WRITE_TOKEN", "RECSYS_PSEUDONYM_KEY", "RECSYS_SERVING_HOST"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.serving_host == "127.0.0.1" and s.spark_driver_host in ("127.0.0.1", None, "")
    assert s.serving_write_token is None and s.pseudonym_key is None  # created per installation, never shipped
    assert s.serving_max_body_bytes <= 1_048_576


def test_airflow_keeps_its_login():
    # conftest put infra.airflow's environment in place before Airflow read its configuration.
    from airflow.configuration import conf

    assert conf.get("core", "auth_manager").endswith("SimpleAuthManager")
    assert not conf.getboolean("core", "simple_auth_manager_all_admins")
    assert conf.get("api", "host") == "127.0.0.1"
