"""A real PostgreSQL for the store tests: Debian's server started by the fixture (initdb + pg_ctl on a temp folder,
loopback only, fsync off), stopped at the end of the session. `make test` and CI (CI=true) require it: without the
server binaries those tests fail, naming the package to install; elsewhere they skip."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.serve.live import free_port

SUDO = "" if os.geteuid() == 0 else "sudo "
INSTALL = f'{SUDO}apt-get install -y --no-install-recommends postgresql && pip install "psycopg[binary]"'


def postgres_bin() -> Path | None:
    """The folder of Debian's initdb/pg_ctl (the newest installed major version), or of ones on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("LMFORGE_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_url():
    bindir = postgres_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bindir = None
    if bindir is None:
        message = f"PostgreSQL (server and psycopg) is not installed; install it with: {INSTALL}"
        if required():
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="lmforge-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as Debian's postgres user
        shutil.chown(folder, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "lmforge", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://lmforge@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
