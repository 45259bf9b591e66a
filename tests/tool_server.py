"""The server behind ``tests/toolrun.py``: imports torch, mmengine, mmcv,
mmseg and mmselds once, then, for each request line (JSON) on its standard
input, forks a child that runs one ``python <script> ...`` command line,
answers ``{"pid": ...}`` when the child has started and ``{"status": ...}``
(the exit status, ``-N`` for signal N, as ``subprocess`` reports it) when it
has ended. One request at a time. Not a test module; run by toolrun.py."""
import atexit
import importlib
import json
import os
import sys
import traceback
import types

# The reply channel is the original standard output; what the imports
# print (the onedl fork prints to stdout) must not reach it.
_replies = os.fdopen(os.dup(1), 'w', buffering=1)
_devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(_devnull, 1)

# What the tools import, mmselds first (it quiets mmcv-lite's import).
PRELOAD = ('mmselds', 'torch', 'mmengine.runner', 'mmseg.datasets',
           'mmseg.engine', 'mmseg.evaluation', 'mmseg.models',
           'mmseg.visualization', 'mmselds.engine', 'mmselds.models')
for name in PRELOAD:
    importlib.import_module(name)


def exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives ``sys.exit(code)``; a code that
    is not an int is printed on standard error, as the interpreter does."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - the status matters more
        pass
    return 1


def child(request) -> None:
    """Run the request's script as ``python <script> <args>`` would; never
    returns."""
    status = 1
    try:
        _replies.close()
        os.dup2(_devnull, 0)
        files = {}
        for fd, path in ((1, request['stdout']), (2, request['stderr'])):
            if path is None:
                continue
            if path not in files:
                files[path] = os.open(path, os.O_WRONLY | os.O_CREAT
                                      | os.O_APPEND, 0o644)
            os.dup2(files[path], fd)
        os.chdir(request['cwd'])
        os.environ.clear()
        os.environ.update(request['env'])
        fresh_random_states()
        # an absolute __file__ and traceback path, as python <script> has
        script = os.path.abspath(request['script'])
        sys.argv = list(request['argv'])
        sys.path[0] = os.path.dirname(script)
        try:
            run_as_main(script)
            status = 0
        except SystemExit as exc:
            status = exit_status(exc)
        except BaseException:  # noqa: BLE001 - as the interpreter reports
            kind, exc, tb = sys.exc_info()
            tb = from_script(tb, script)
            sys.excepthook(kind, exc.with_traceback(tb), tb)
            status = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(status)


def run_as_main(script: str) -> None:
    """Run ``script`` (an absolute path) as the ``__main__`` module, as
    ``python <script>`` does: ``__file__`` is the absolute path,
    ``sys.argv[0]`` stays as given (``runpy.run_path`` would replace it)."""
    import builtins
    from importlib.machinery import SourceFileLoader
    main = types.ModuleType('__main__')
    main.__file__, main.__cached__, main.__spec__ = script, None, None
    main.__builtins__ = builtins
    main.__loader__ = SourceFileLoader('__main__', script)
    sys.modules['__main__'] = main
    with open(script, 'rb') as f:
        code = compile(f.read(), script, 'exec')
    exec(code, main.__dict__)


def fresh_random_states() -> None:
    """Random states as a new interpreter's: numpy's global generator and
    torch's default one seeded anew from the OS, as each is on import
    (Python's ``random`` reseeds itself after a fork)."""
    import numpy as np
    import torch
    np.random.seed()
    torch.seed()


def from_script(tb, script: str):
    """``tb`` without this server's frames: from the script's first frame
    on, where the interpreter's traceback of ``python <script>`` starts."""
    start, path = tb, script
    while start is not None and start.tb_frame.f_code.co_filename != path:
        start = start.tb_next
    return start or tb


def serve() -> None:
    _replies.write(json.dumps(dict(ready=True)) + '\n')
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        _replies.write(json.dumps(dict(pid=pid)) + '\n')
        _, wait_status = os.waitpid(pid, 0)
        _replies.write(json.dumps(dict(
            status=os.waitstatus_to_exitcode(wait_status))) + '\n')


if __name__ == '__main__':
    serve()
