"""Service settings have one definition each: the environment (SLMTUNE_<NAME>) fills what no flag gives, a flag
wins over it, a bad value is refused naming the setting, and `--help` shows each flag's variable and default."""

import pytest

from slmtune.service.settings import MiB, Settings
from tests.helpers import run_cli


def test_the_environment_fills_what_no_flag_gives_and_a_flag_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMTUNE_MAX_RUNNING", "7")
    monkeypatch.setenv("SLMTUNE_AUTH", "false")
    monkeypatch.setenv("SLMTUNE_DB_URL", "postgres://svc@db/slm")
    s = Settings(data_dir=tmp_path)
    assert s.max_running == 7 and s.auth is False and s.db_url == "postgresql+psycopg://svc@db/slm"
    assert Settings(data_dir=tmp_path, max_running=3).max_running == 3


def test_a_bad_value_is_refused_naming_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="max_running: Input should be greater than or equal to 1"):
        Settings(max_running=0)
    monkeypatch.setenv("SLMTUNE_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="executor: Input should be 'local' or 'ray'"):
        Settings()
    monkeypatch.delenv("SLMTUNE_EXECUTOR")
    with pytest.raises(ValueError, match="job_nnodes above 1 needs the Ray executor"):
        Settings(job_nnodes=2)
    with pytest.raises(ValueError, match="max_runing: Extra inputs are not permitted"):
        Settings(max_runing=4)


def test_serve_help_names_each_flags_variable_and_default():
    r = run_cli("serve", "--help", env={"COLUMNS": "400"})
    text = " ".join(r.stdout.replace("│", " ").split())
    assert r.returncode == 0
    for shown in ("env SLMTUNE_MAX_RUNNING, default 32", "env SLMTUNE_MAX_UPLOAD_BYTES, default 512",
                  "env SLMTUNE_RATE_LIMIT_RPM, default 3000", "pip install 'slmtune[ray]'"):
        assert shown in text, shown
    assert Settings.model_fields["max_upload_bytes"].default == 512 * MiB
