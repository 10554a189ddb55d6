"""The browser tests must run where they are expected to: `make test` installs Debian's chromium (or stops with the
command to run), and a missing browser fails them under CI=true or `make test` instead of skipping them quietly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


def run_browser_tests(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """One browser test in a child pytest with chromium pointed at nothing (it fails or skips before any server)."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "LMFORGE_REQUIRE_BROWSER")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         str(ROOT / "tests" / "serve" / "test_web_ui.py"), "-k", "type_submit"],
        cwd=tmp_path, env={**base, "LMFORGE_CHROMIUM": str(tmp_path / "no-chromium"), **env},
        capture_output=True, text=True, timeout=300, check=False)


def test_missing_chromium_skips_only_outside_ci_and_make_test(tmp_path):
    quiet = run_browser_tests(tmp_path)
    assert quiet.returncode == 0 and "1 skipped" in quiet.stdout, quiet.stdout[-2000:]
    for env in ({"CI": "true"}, {"LMFORGE_REQUIRE_BROWSER": "1"}):
        loud = run_browser_tests(tmp_path, **env)
        assert loud.returncode == 1 and "1 error" in loud.stdout, (env, loud.stdout[-2000:])
        assert "Debian's chromium is not installed" in loud.stdout and INSTALL in loud.stdout
        assert "skipped" not in loud.stdout.splitlines()[-1]  # the summary: failed, not skipped


@pytest.fixture
def fake_apt(tmp_path):
    """A stand-in apt-get on PATH that records its arguments; `install` puts a fake browser on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/apt.log
[ -n "$FAIL" ] && exit 100
case "$1" in install) printf '#!/bin/sh\\n' > {bin_dir}/lmforge-test-chromium; chmod +x {bin_dir}/lmforge-test-chromium;; esac
exit 0
""")
    apt.chmod(0o755)
    return bin_dir


def make_browser(bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "browser", "CHROMIUM=lmforge-test-chromium",
         f"APT_GET={bin_dir / 'apt-get'}"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env},
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("make") is None or os.geteuid() != 0, reason="needs make, run as root (as CI is)")
def test_make_installs_chromium_when_missing(fake_apt, tmp_path):
    done = make_browser(fake_apt)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq --no-install-recommends chromium fonts-dejavu-core"]
    again = make_browser(fake_apt)  # present now: nothing to install
    assert again.returncode == 0 and len((tmp_path / "apt.log").read_text().splitlines()) == 2


@pytest.mark.skipif(shutil.which("make") is None or os.geteuid() != 0, reason="needs make, run as root (as CI is)")
def test_make_stops_with_the_install_command_when_it_cannot_install(fake_apt, tmp_path):
    failed = make_browser(fake_apt, FAIL="1")
    assert failed.returncode != 0
    assert f"install it with\n  {fake_apt / 'apt-get'} update && {fake_apt / 'apt-get'} install -y " \
           "--no-install-recommends chromium fonts-dejavu-core" in failed.stderr


def test_make_test_requires_the_browser_tests(tmp_path):
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "test"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert "LMFORGE_REQUIRE_BROWSER=1" in plan.stdout and "pytest" in plan.stdout
    assert "LMFORGE_REQUIRE_POSTGRES=1" in plan.stdout  # and the PostgreSQL store tests
    assert "command -v chromium" in plan.stdout  # the browser rule runs first
