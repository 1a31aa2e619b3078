"""A real IMAP server for tests: Debian's dovecot (dovecot-imapd), started with a config of
its own on a free loopback port, one user with a static password, mail in a Maildir under
the test's folder. Stopped (and its processes gone) when the block ends."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.smtp_server import free_port

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "imap-test-password"
MAIL_UID = MAIL_GID = 65534  # nobody / nogroup

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def require_dovecot() -> None:
    if not os.path.exists(DOVECOT):
        if os.environ.get("CI"):
            pytest.fail("dovecot is not installed (Debian package dovecot-imapd; .ci/run installs it)")
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")


class IMAPServer:
    """Mail is stored as `nobody` (dovecot refuses to run a mailbox as root), so it lives in a
    folder of its own that user can reach (pytest's tmp_path is private to root)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
        self.port = free_port()
        self.url = f"imap://{USER}:{PASSWORD}@127.0.0.1:{self.port}/INBOX"
        self.config = self.root / "dovecot.conf"

    def __enter__(self) -> "IMAPServer":
        require_dovecot()
        os.chmod(self.root, 0o755)
        for folder in ("run", "state", "mail", "home"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("mail", "home"):
            os.chown(self.root / folder, MAIL_UID, MAIL_GID)
        users = {name for name in ("dovenull", "dovecot") if _exists(name)}
        self.config.write_text(CONFIG.format(
            root=self.root, port=self.port, password=PASSWORD, uid=MAIL_UID, gid=MAIL_GID,
            login_user="dovenull" if "dovenull" in users else "nobody",
            internal_user="dovecot" if "dovecot" in users else "nobody",
            internal_group="dovecot" if "dovecot" in users else "nogroup"))
        # dovecot forks into the background; its children must not hold our pipes open.
        with open(self.root / "start.log", "w") as out:
            started = subprocess.run([DOVECOT, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, timeout=30)
        if started.returncode != 0:
            raise RuntimeError(f"dovecot did not start: {(self.root / 'start.log').read_text()}{self._log()}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"dovecot is not listening on 127.0.0.1:{self.port}{self._log()}")

    def _log(self) -> str:
        log = self.root / "dovecot.log"
        return "\n" + log.read_text()[-2000:] if log.exists() else ""

    def __exit__(self, *exc) -> None:
        subprocess.run([shutil.which("doveadm") or "/usr/bin/doveadm", "-c", str(self.config), "stop"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def _exists(user: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False
