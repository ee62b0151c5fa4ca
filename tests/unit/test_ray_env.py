"""What the Ray executor sends to a job's nodes: settings, never secrets (issue 26)."""

from slmtune.service.ray_executor import forwarded_env, without_password


def test_nodes_get_settings_and_no_secrets():
    env = {"SLMTUNE_TEST_MODELS": "1", "SLMTUNE_HOME": "/srv/slm", "HF_HOME": "/hf", "HF_TOKEN": "hf_x",
           "SLMTUNE_DB_URL": "postgresql://u:pw@db/x", "HF_HUB_OFFLINE": "1", "SLMTUNE_API_KEY": "sk-1",
           "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/bin"}
    assert forwarded_env(env) == {"SLMTUNE_TEST_MODELS": "1", "SLMTUNE_HOME": "/srv/slm", "HF_HOME": "/hf",
                                  "HF_HUB_OFFLINE": "1"}


def test_the_database_url_travels_without_its_password():
    assert without_password("postgresql+psycopg://svc:s3cr%40t@db.internal:5432/slm?sslmode=require") == \
        "postgresql+psycopg://svc@db.internal:5432/slm?sslmode=require"
    assert without_password("postgresql://postgres@127.0.0.1:5432/test") == "postgresql://postgres@127.0.0.1:5432/test"
    assert without_password("sqlite:////var/lib/slm/slmtune.db") == "sqlite:////var/lib/slm/slmtune.db"
