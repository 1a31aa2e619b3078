"""Settings: config/defaults.toml, overridden by MAILER_* environment variables
and, in tests, by explicit overrides. One immutable Settings object per app."""
from __future__ import annotations

import dataclasses
import functools
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
    confirmations_per_day: int = 3
    # Media library: largest upload accepted, and most pixels an image may decode to.
    media_max_bytes: int = 10 * 1024 * 1024
    media_max_pixels: int = 40_000_000
    proxy_count: int = 0
    redis_url: str = ""
    # The clinic's blog (campaigns.blog): its RSS or Atom feed, and the limits of reading it.
    blog_feed_url: str = ""
    feed_allow_private: str = ""
    feed_max_bytes: int = 2_000_000
    feed_timeout_seconds: int = 10
    instance_path: str = ""
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""
    dns_resolver: str = ""
    bounce_address: str = ""
    bounce_mailbox_url: str = ""
    # Names set by the environment or by create_app's overrides: the settings page cannot change them.
    fixed: frozenset[str] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def from_email(self) -> str:
        return _address_in(self.from_addr)

    @property
    def from_domain(self) -> str:
        return self.from_email.rpartition("@")[2]


@functools.lru_cache(maxsize=64)
def _address_in(value: str) -> str:
    """The address in a From value (read for every message sent: 11 µs a parse)."""
    return parseaddr(value)[1]


def _coerce(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"MAILER_{name.upper()} must be a whole number, got {raw!r}")
    return raw


# Shorter keys are refused: the key signs every link and keys the consent ledger's HMAC.
MIN_SECRET_KEY_LENGTH = 32
MAKE_KEY_HINT = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'


def _instance_secret(instance_path: Path) -> str:
    """The key in instance/secret_key, generated on first start and kept, so links survive
    restarts. Processes starting together agree: each writes a complete candidate to its
    own temporary file (exclusive create, fsync) and os.link()s it to the final name,
    which fails if another process got there first; everyone then reads the winner's
    bytes. The final name never appears half-written. One host only (see load_settings)."""
    path = instance_path / "secret_key"
    if not path.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        temporary = instance_path / f".secret_key.{os.getpid()}.{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process won the race: use its key
            else:
                directory = os.open(instance_path, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        finally:
            temporary.unlink(missing_ok=True)
    return _checked_key(path.read_text().strip(), f"the key file {path}")


def _checked_key(key: str, source: str) -> str:
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(f"{source} holds a secret key of {len(key)} characters; at least "
                            f"{MIN_SECRET_KEY_LENGTH} are needed ({MAKE_KEY_HINT})")
    return key


def _secret_key(values: dict, environ, instance_path: Path) -> str:
    """MAILER_SECRET_KEY, else the file named by MAILER_SECRET_KEY_FILE, else (SQLite, one
    host) instance/secret_key. PostgreSQL may serve several hosts, each with its own
    instance folder: there the key must be given. The key is never kept in the database."""
    if values["secret_key"]:
        return _checked_key(str(values["secret_key"]), "MAILER_SECRET_KEY")
    key_file = environ.get("MAILER_SECRET_KEY_FILE")
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"MAILER_SECRET_KEY_FILE {key_file!r} cannot be read: {exc.strerror}")
        return _checked_key(key, f"MAILER_SECRET_KEY_FILE {key_file!r}")
    if not str(values["database_url"]).startswith("sqlite"):
        raise SettingsError("MAILER_SECRET_KEY or MAILER_SECRET_KEY_FILE must be set when the database is not "
                            "SQLite: every web app, worker and host must sign with the same key; "
                            f"{MAKE_KEY_HINT}, and give the same value to every process")
    return _instance_secret(instance_path)


def read_defaults() -> dict[str, object]:
    return tomllib.loads(DEFAULTS_FILE.read_text())


def env_name(name: str) -> str:
    return ENV_NAMES.get(name, f"MAILER_{name.upper()}")


def load_settings(overrides: dict | None = None, environ=None) -> Settings:
    """Defaults, then the environment, then `overrides`. What staff set on the settings
    page (mailer.staff.site_settings) comes between the defaults and the environment."""
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
    values["secret_key"] = _secret_key(values, environ, instance_path)
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
    if settings.bounce_address and ("@" not in parseaddr(settings.bounce_address)[1]
                                    or "+" in parseaddr(settings.bounce_address)[1].partition("@")[0]):
        raise SettingsError(f"MAILER_BOUNCE_ADDRESS {settings.bounce_address!r} must be an address such as "
                            "bounce@example.org (without a +: mailer adds +<delivery> to it)")
    return settings
