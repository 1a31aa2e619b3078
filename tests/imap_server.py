"""A real IMAP (and, if asked, POP3) server for tests: Debian's dovecot (dovecot-imapd,
dovecot-pop3d), started with a config of its own on free loopback ports, one user with a static password, mail in a Maildir under
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
protocols = {protocols}
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
{pop3_service}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


POP3_SERVICE = """\
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def require_dovecot(pop3: bool = False) -> None:
    if pop3 and not os.path.exists("/usr/lib/dovecot/pop3"):
        if os.environ.get("CI"):
            pytest.fail("dovecot's POP3 server is not installed (Debian package dovecot-pop3d; .ci/run installs it)")
        pytest.skip("dovecot's POP3 server is not installed (apt-get install dovecot-pop3d)")
    if not os.path.exists(DOVECOT):
        if os.environ.get("CI"):
            pytest.fail("dovecot is not installed (Debian package dovecot-imapd; .ci/run installs it)")
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")


class IMAPServer:
    """Mail is stored as `nobody` (dovecot refuses to run a mailbox as root), so it lives in a
    folder of its own that user can reach (pytest's tmp_path is private to root)."""

    def __init__(self, *, pop3: bool = False):
        self.root = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
        self.port = free_port()
        self.url = f"imap://{USER}:{PASSWORD}@127.0.0.1:{self.port}/INBOX"
        # pop3=True: the same mailbox over POP3 too (Debian's dovecot-pop3d).
        self.pop3_port = free_port() if pop3 else None
        self.pop3_url = f"pop3://{USER}:{PASSWORD}@127.0.0.1:{self.pop3_port}" if pop3 else None
        self.config = self.root / "dovecot.conf"

    def __enter__(self) -> "IMAPServer":
        require_dovecot(pop3=self.pop3_port is not None)
        os.chmod(self.root, 0o755)
        for folder in ("run", "state", "mail", "home"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("mail", "home"):
            os.chown(self.root / folder, MAIL_UID, MAIL_GID)
        users = {name for name in ("dovenull", "dovecot") if _exists(name)}
        pop3_service = POP3_SERVICE.format(port=self.pop3_port) if self.pop3_port else ""
        self.config.write_text(CONFIG.format(
            protocols="imap pop3" if self.pop3_port else "imap", pop3_service=pop3_service, root=self.root, port=self.port, password=PASSWORD, uid=MAIL_UID, gid=MAIL_GID,
            login_user="dovenull" if "dovenull" in users else "nobody",
            internal_user="dovecot" if "dovecot" in users else "nobody",
            internal_group="dovecot" if "dovecot" in users else "nogroup"))
        # dovecot forks into the background; its children must not hold our pipes open.
        with open(self.root / "start.log", "w") as out:
            started = subprocess.run([DOVECOT, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, timeout=30)
        if started.returncode != 0:
            raise RuntimeError(f"dovecot did not start: {(self.root / 'start.log').read_text()}{self._log()}")
        for port in filter(None, (self.port, self.pop3_port)):
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.__exit__()
                        raise RuntimeError(f"dovecot is not listening on 127.0.0.1:{port}{self._log()}") from None
                    time.sleep(0.1)
        return self

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
