"""Dev session settings (environment variables prefixed ``SOMNUS_DEVSESSION_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DevSessionSettings(BaseSettings):
    """Bounds of the in-memory cache of open sessions."""

    model_config = SettingsConfigDict(env_prefix="SOMNUS_DEVSESSION_", extra="ignore")

    cache_max_sessions: int = Field(default=32, ge=1)
    cache_idle_s: float = Field(default=1800.0, gt=0)
