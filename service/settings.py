"""Service settings, read from the environment (prefix ``OARMORPH_``) in one place."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OARMORPH_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: str = "/var/lib/oarmorph"
    max_upload_mb: int = 2048


@lru_cache
def get_settings() -> Settings:
    return Settings()
