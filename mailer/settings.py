"""Settings: config/defaults.toml, overridden by MAILER_* environment variables
and, in tests, by explicit overrides. One immutable Settings object per app."""
from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from email.utils import parseaddr
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = ROOT / "config" / "defaults.toml"
# Names from the public contract that differ from MAILER_<KEY>.
ENV_NAMES = {"from_addr": "MAILER_FROM"}


class SettingsError(ValueError):
    """A setting has a value mailer cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    smtp_url: str
    base_url: str
    from_addr: str
    reply_to: str
    secret_key: str
    timezone: str
    organisation: str
    postal_address: str
    logo_url: str
    unsubscribe_mailto: str
    pending_expiry_days: int
    confirmation_resend_seconds: int
    signup_rate_limit: int
    signup_rate_window_seconds: int
    send_batch_size: int
    lease_seconds: int
    send_interval_seconds: int
    retry_base_seconds: int
    retry_cap_seconds: int
    smtp_timeout_seconds: int
    retry_deadline_hours: int
    smtp_connections: int
    per_domain_concurrency: int
    rate_per_second: int
    rate_per_hour: int
    rate_per_day: int
    track_opens: bool
    track_clicks: bool
    login_max_failures: int
    login_lockout_seconds: int
    instance_path: str = ""
    # Names set by the environment or by create_app's overrides: the settings page cannot change them.
    fixed: frozenset[str] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def from_email(self) -> str:
        return parseaddr(self.from_addr)[1]

    @property
    def from_domain(self) -> str:
        return self.from_email.rpartition("@")[2]


def _coerce(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"MAILER_{name.upper()} must be a whole number, got {raw!r}")
    return raw


def _instance_secret(instance_path: Path) -> str:
    """A random key generated on first start and kept, so links survive restarts."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def read_defaults() -> dict[str, object]:
    return tomllib.loads(DEFAULTS_FILE.read_text())


def env_name(name: str) -> str:
    return ENV_NAMES.get(name, f"MAILER_{name.upper()}")


def load_settings(overrides: dict | None = None, environ=None) -> Settings:
    """Defaults, then the environment, then `overrides`. What staff set on the settings
    page (mailer.site_settings) comes between the defaults and the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = read_defaults()
    fixed = set(overrides or {})
    for name, default in list(values.items()):
        if env_name(name) in environ:
            values[name] = _coerce(name, environ[env_name(name)], default)
            fixed.add(name)
    values.update(overrides or {})
    values["fixed"] = frozenset(fixed)
    instance_path = Path(values.get("instance_path") or environ.get("MAILER_INSTANCE_PATH") or ROOT / "instance")
    values["instance_path"] = str(instance_path)
    if not values["database_url"]:
        instance_path.mkdir(parents=True, exist_ok=True)
        values["database_url"] = f"sqlite:///{instance_path / 'mailer.db'}"
    if not values["secret_key"]:
        values["secret_key"] = _instance_secret(instance_path)
    if not values["reply_to"]:
        values["reply_to"] = values["from_addr"]
    values["base_url"] = str(values["base_url"]).rstrip("/")
    unknown = set(values) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**values)
    try:
        settings.zone
    except Exception:
        raise SettingsError(f"MAILER_TIMEZONE {settings.timezone!r} is not an IANA time zone")
    if "@" not in settings.from_email:
        raise SettingsError(f"MAILER_FROM {settings.from_addr!r} has no email address")
    return settings
