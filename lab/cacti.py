"""A private Cacti 1.2 (Debian's package) on a private MariaDB, for importing templates.

MariaDB runs from a temporary data directory on a unix socket only (no TCP port); Debian's
Cacti tree is copied beside it with its own config.php and log directory, so neither
/etc/cacti nor /var/log/cacti nor a system database is touched. The database is loaded from
the package's conf_templates/cacti.sql, as a new install is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from lab.postfix import LabError, wait_until

CACTI_SHARE = Path("/usr/share/cacti")
DATABASE, USER, PASSWORD = "cacti", "cacti", "cacti-lab"

CONFIG_PHP = """<?php
$database_type = 'mysql';
$database_default = '{db}';
$database_hostname = 'localhost';
$database_username = '{user}';
$database_password = '{password}';
$database_port = '3306';
$database_retries = 2;
$database_ssl = false;
$database_ssl_key = '';
$database_ssl_cert = '';
$database_ssl_ca = '';
$database_persist = false;
$poller_id = 1;
$url_path = '/cacti/';
$cacti_session_name = 'Cacti';
$cacti_db_session = false;
$disable_log_rotation = true;
"""


class Cacti:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "mysqld.sock"
        self.log = root / "cacti" / "site" / "log" / "cacti.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def sql(self, statement: str, database: str = "") -> str:
        argv = ["mariadb", "--no-defaults", "-S", str(self.socket), "-u", "root", "-N", "-B"]
        r = subprocess.run(
            [*argv, *([database] if database else []), "-e", statement],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode:
            raise LabError(f"mariadb: {r.stderr.strip()}")
        return r.stdout

    def start(self) -> Cacti:
        data = self.root / "data"
        data.mkdir(parents=True)
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
             "--skip-networking", "--user=root", f"--pid-file={self.root / 'mysqld.pid'}",
             f"--log-error={self.root / 'mysqld.err'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LabError(f"mariadbd exited {self.proc.returncode}")
            return self.socket.exists()

        wait_until(up, 120, "MariaDB to start")
        self.sql(
            f"CREATE DATABASE {DATABASE};"
            f" CREATE USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';"
            f" GRANT ALL ON {DATABASE}.* TO '{USER}'@'localhost';"
        )
        with (CACTI_SHARE / "conf_templates" / "cacti.sql").open("rb") as schema:
            subprocess.run(
                ["mariadb", "--no-defaults", "-S", str(self.socket), "-u", "root", DATABASE],
                stdin=schema, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
        tree = self.root / "cacti"
        tree.mkdir()
        for part in ("site", "cli"):
            shutil.copytree(CACTI_SHARE / part, tree / part, symlinks=True)
        include = tree / "site" / "include" / "config.php"
        include.unlink()
        include.write_text(CONFIG_PHP.format(db=DATABASE, user=USER, password=PASSWORD))
        for private in ("log", "rra"):  # symbolic links to /var/log/cacti, /var/lib/cacti/rra
            (tree / "site" / private).unlink()
            (tree / "site" / private).mkdir()
        # Every PHP process Cacti starts (the poller's cmd.php too) finds the private socket.
        ini = self.root / "php"
        ini.mkdir()
        (ini / "mailpulse-lab.ini").write_text(f"pdo_mysql.default_socket = {self.socket}\n")
        if "'" in str(self.log) or "\\" in str(self.log):
            raise LabError(f"{self.log}: a path SQL would need quoted")
        setting = f"('path_cactilog', '{self.log}')"
        self.sql(f"REPLACE INTO settings (name, value) VALUES {setting}", DATABASE)  # noqa: S608
        return self

    @property
    def env(self) -> dict[str, str]:
        # A leading ':' keeps PHP's own conf.d (its modules) and adds ours after it.
        return {**os.environ, "PHP_INI_SCAN_DIR": f":{self.root / 'php'}"}

    def php(
        self, script: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """A PHP script of the copied tree ("cli/add_device.php", "site/poller.php")."""
        path = self.root / "cacti" / script
        return subprocess.run(
            ["php", str(path), *args], capture_output=True, text=True, timeout=timeout,
            cwd=path.parent, env=self.env,
        )  # fmt: skip

    def import_template(self, path: Path) -> subprocess.CompletedProcess[str]:
        return self.php("cli/import_template.php", f"--filename={path}")

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
