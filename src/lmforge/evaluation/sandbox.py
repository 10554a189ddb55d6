"""Run a generated function's doctests in a sandboxed subprocess.

The child runs isolated (``python -I``), with a wall-clock timeout (killed when it runs over), CPU, memory and
file-size limits, in an empty temporary folder, with no network (a fresh network namespace when the OS allows it;
sockets, subprocesses and browsers are disabled in the interpreter either way). Generated code is never executed in
the lmforge process itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CHILD = r'''
import json, sys
request = json.loads(sys.stdin.read())

def _blocked(*args, **kwargs):
    raise PermissionError("blocked by the lmforge sandbox")

# no network: a new network namespace when permitted, and sockets disabled regardless
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    isolated = _libc.unshare(0x40000000) == 0  # CLONE_NEWNET
except Exception:
    isolated = False
import resource, socket, os, subprocess, webbrowser, shutil
limit = request["memory_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (request["cpu_seconds"], request["cpu_seconds"] + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
socket.socket = socket.create_connection = socket.socketpair = socket.create_server = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
for name in ("system", "fork", "forkpty", "execv", "execve", "execvp", "popen", "kill", "killpg", "spawnv",
             "spawnve", "posix_spawn", "rmdir", "removedirs"):
    if hasattr(os, name):
        setattr(os, name, _blocked)
shutil.rmtree = _blocked
webbrowser.open = webbrowser.open_new = webbrowser.open_new_tab = _blocked

import doctest, importlib
result = {"attempted": 0, "failed": 0, "error": None, "isolated": isolated}
try:
    module = importlib.import_module(request["module"]) if request["module"] else None
    namespace = dict(vars(module)) if module else {}
    namespace["__name__"] = "__lmforge_candidate__"
    exec(compile(request["code"], "<candidate>", "exec"), namespace)
    test = doctest.DocTestParser().get_doctest(request["docstring"], namespace, request["name"], "<candidate>", 0)
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda text: None)
    result.update(attempted=runner.tries, failed=runner.failures)
except BaseException as exc:  # the candidate may raise anything, SystemExit included
    result["error"] = f"{type(exc).__name__}: {exc}"[:300]
sys.stdout.write("\n" + json.dumps(result))
'''


@dataclass
class DoctestResult:
    passed: bool
    attempted: int = 0
    failed: int = 0
    error: str | None = None
    isolated: bool = False


def run_doctests(module: str | None, name: str, code: str, docstring: str, *, timeout: float = 5.0,
                 memory_bytes: int = 1 << 30) -> DoctestResult:
    """Define ``code`` in the namespace of ``module`` and run the doctests of ``docstring`` against it."""
    request = {"module": module, "name": name, "code": code, "docstring": docstring, "memory_bytes": memory_bytes,
               "cpu_seconds": max(1, int(timeout))}
    with tempfile.TemporaryDirectory(prefix="lmforge-sandbox-") as folder:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", CHILD], input=json.dumps(request), capture_output=True,
                                  check=False, text=True, timeout=timeout, cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": folder})
        except subprocess.TimeoutExpired:
            return DoctestResult(False, error=f"timed out after {timeout:.0f}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU-time limit struck first
        return DoctestResult(False, error=f"timed out after {request['cpu_seconds']}s of CPU time")
    if not lines:
        return DoctestResult(False, error=(proc.stderr.strip().splitlines() or ["the sandbox process died"])[-1][:300])
    data = json.loads(lines[-1])
    ok = data["error"] is None and data["attempted"] > 0 and data["failed"] == 0
    return DoctestResult(ok, data["attempted"], data["failed"], data["error"], data["isolated"])
