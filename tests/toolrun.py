"""Run ``python tools/<tool>.py ...`` command lines in the tests without
paying the interpreter's start and torch/mmseg imports each time.

``run(cmd, ...)`` takes the arguments of :func:`subprocess.run` that the
tests use and returns a :class:`subprocess.CompletedProcess` (or raises
:class:`subprocess.TimeoutExpired`, or :class:`subprocess.CalledProcessError`
with ``check=True``), like ``subprocess.run``. A command line
``[sys.executable, 'some_script.py', ...]`` runs in a new process forked from
a server process that has imported torch, mmengine, mmcv, mmseg and mmselds
once (``tests/tool_server.py``): the child takes the command's working
folder, environment, ``sys.argv`` and ``sys.path[0]``, its standard output
and error go to files, and it runs the script as ``__main__`` and ends as the
interpreter would (exit status of ``sys.exit``, a traceback and status 1 for
an uncaught exception, ``atexit`` handlers run). Each tool run still is its
own process - nothing it does is seen by the next one - but starts in ~0.1 s
instead of the ~5-7 s the imports take on the 2-core CI machine; the suite
runs about 150 of them.

Everything else (``bash`` scripts, ``python -c``, ``python -m``, and an
interpreter other than ``sys.executable``) runs through ``subprocess.run``,
and so does every command when ``MMSELDS_TESTS_SUBPROCESS=1`` (to check that
a test does not depend on the fork). What differs from a fresh interpreter:
environment variables that torch, mmengine, mmcv or mmseg read when they
are imported keep the values the server started with (the tests change none
of them), and warnings given once while those packages were imported are not
given again; the import-time checks (``test_lazy_imports.py``,
``test_log_noise.py``) therefore start real interpreters.
"""
import atexit
import json
import os
import os.path as osp
import select
import signal
import subprocess
import sys
import tempfile
import threading

SERVER = osp.join(osp.dirname(osp.abspath(__file__)), 'tool_server.py')
# A forked run given no timeout is stopped after this many seconds (a run
# that hangs fails its test instead of holding CI until its limit).
FORK_TIMEOUT = 1200
_lock = threading.Lock()
_server = None


def forks(cmd) -> bool:
    """Whether ``cmd`` runs in a forked child (a Python script run by this
    interpreter) rather than through ``subprocess.run``."""
    return (os.environ.get('MMSELDS_TESTS_SUBPROCESS') != '1'
            and len(cmd) >= 2 and str(cmd[0]) == sys.executable
            and str(cmd[1]).endswith('.py'))


def run(cmd, cwd=None, timeout=None, capture_output=False, text=False,
        env=None, stdout=None, stderr=None, check=False, input=None):
    """:func:`subprocess.run` for the tests (see the module's docstring)."""
    cmd = [str(c) for c in cmd]
    if not forks(cmd) or input is not None:
        return subprocess.run(cmd, cwd=cwd, timeout=timeout,
                              capture_output=capture_output, text=text,
                              env=env, stdout=stdout, stderr=stderr,
                              check=check, input=input)
    if capture_output:
        stdout = stderr = subprocess.PIPE
    with tempfile.TemporaryDirectory(prefix='toolrun') as tmp:
        out = osp.join(tmp, 'stdout') if stdout == subprocess.PIPE else None
        err = (out if stderr == subprocess.STDOUT else
               osp.join(tmp, 'stderr') if stderr == subprocess.PIPE else None)
        request = dict(script=cmd[1], argv=cmd[1:],
                       cwd=osp.abspath(cwd or os.getcwd()),
                       env=dict(os.environ if env is None else env),
                       stdout=out, stderr=err)
        timeout = FORK_TIMEOUT if timeout is None else timeout
        status, timed_out = _server_run(request, timeout)

        def read(path):
            if path is None or not osp.exists(path):
                return None
            with open(path, 'rb') as f:
                data = f.read()
            return data.decode('utf-8', 'replace') if text else data
        result = subprocess.CompletedProcess(
            cmd, status, read(out),
            None if stderr == subprocess.STDOUT else read(err))
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, result.stdout,
                                        result.stderr)
    if check:
        result.check_returncode()
    return result


class _Server:
    """The server process and its request/reply pipes."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, SERVER], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, cwd=osp.dirname(SERVER))
        reply = self.reply(timeout=600)
        if reply is None or reply.get('ready') is not True:
            self.close()
            raise RuntimeError(f'tests/tool_server.py did not start: {reply}')

    def reply(self, timeout=None):
        """The server's next reply line, or None after ``timeout`` seconds
        or when the server has ended."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def send(self, request):
        self.proc.stdin.write((json.dumps(request) + '\n').encode())
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _server_run(request, timeout):
    """Run ``request`` in a child of the server: (exit status, whether it
    was killed after ``timeout`` seconds)."""
    global _server
    with _lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _Server()
            atexit.register(_server.close)
        _server.send(request)
        started = _server.reply(timeout=60)
        if started is None or 'pid' not in started:
            raise RuntimeError(f'tests/tool_server.py did not fork: {started}')
        done = _server.reply(timeout=timeout)
        if done is not None:
            return done['status'], False
        if _server.proc.poll() is not None:
            raise RuntimeError('tests/tool_server.py ended while running '
                               f'{request["argv"]}')
        try:
            os.kill(started['pid'], signal.SIGKILL)
        except ProcessLookupError:
            pass
        done = _server.reply(timeout=60)
        return (done or {}).get('status', -signal.SIGKILL), True
