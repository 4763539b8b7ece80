from __future__ import annotations

import pytest

from service.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

VALID = {
    "DATABASE_URL": "postgresql://u:p@db:5432/app",
    "REDIS_URL": "redis://cache:6379/0",
    "AI_MODEL_BASE_URL": "https://api.deepseek.com/v1",
    "AI_API_KEY": "sk-a, sk-b ,",
    "JWT_SECRET": "s" * 32,
}


def test_defaults_and_key_pool() -> None:
    settings = load_settings(VALID)
    assert settings.ai_model_name == "deepseek-chat"
    assert settings.ai_api_keys == ("sk-a", "sk-b")
    assert (settings.ai_model_max_tokens, settings.max_concurrent_agents) == (4000, 10)
    assert (settings.agent_timeout, settings.workflow_timeout) == (300, 1800)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", ""),
        ("AI_MODEL_BASE_URL", "api.deepseek.com"),
        ("AI_API_KEY", " , "),
        ("JWT_SECRET", "short"),
        ("MAX_CONCURRENT_AGENTS", "ten"),
        ("AGENT_TIMEOUT", "0"),
    ],
)
def test_bad_setting_names_the_variable_in_one_line(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**VALID, name: value})
    message = str(caught.value)
    assert name in message and "\n" not in message


def test_missing_required_setting() -> None:
    env = dict(VALID)
    del env["DATABASE_URL"]
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        load_settings(env)


def test_cos_backend_needs_its_settings() -> None:
    with pytest.raises(SettingsError, match="COS_REGION is not set; ARTIFACT_STORAGE_BACKEND=cos needs it"):
        load_settings({**VALID, "ARTIFACT_STORAGE_BACKEND": "cos"})
    with pytest.raises(SettingsError, match="ARTIFACT_STORAGE_BACKEND='s3' must be 'local' or 'cos'"):
        load_settings({**VALID, "ARTIFACT_STORAGE_BACKEND": "s3"})
    cos = {"COS_REGION": "ap-guangzhou", "COS_BUCKET": "b-1", "COS_SECRET_ID": "id", "COS_SECRET_KEY": "key"}
    settings = load_settings({**VALID, "ARTIFACT_STORAGE_BACKEND": "cos", **cos})
    assert (settings.cos_bucket, settings.cos_scheme, settings.cos_domain) == ("b-1", "https", None)
