"""Run a command in this interpreter and kill it (a power cut) at one chosen point.

    python -m tests.support.killpoint LOG KEY -- edge-agent args...

Every call of a file-system-changing primitive (``os.replace``, ``rename``,
``symlink``, ``unlink``, ``rmdir``, ``mkdir``, ``fsync``, ``ftruncate``) and
every process spawn, in this process, is a point, named by the primitive and
the agent code that led to it (``replace@agent/releases.py:170<agent/...``,
innermost first); each is appended to LOG. At the first point named KEY the
whole process group, pip and venv children included, gets SIGKILL before the
call happens: what a power cut at that instant leaves on disk (but for
page-cache loss, which the code's fsyncs are there for). ``KEY = -`` kills
nowhere (the dry run that lists the points); ``KEY+delay`` kills ``delay``
seconds after that point (inside a long child such as pip). Test code only:
nothing of this is in the agent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

WATCHED = {
    ("posix", "replace"),
    ("posix", "rename"),
    ("posix", "symlink"),
    ("posix", "unlink"),
    ("posix", "rmdir"),
    ("posix", "mkdir"),
    ("posix", "fsync"),
    ("posix", "ftruncate"),
    ("_posixsubprocess", "fork_exec"),
}


def power_cut() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main() -> None:
    log_path, spec = sys.argv[1], sys.argv[2]
    assert sys.argv[3] == "--"
    target, _, delay = spec.partition("+")
    fired = False
    log = open(log_path, "w", buffering=1)

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal fired
        if event != "c_call" or (getattr(arg, "__module__", None), getattr(arg, "__name__", None)) not in WATCHED:
            return
        path = []
        f = frame
        while f is not None:
            name = f.f_code.co_filename
            if f"{os.sep}agent{os.sep}" in name and "tests" not in name:
                path.append(f"{name[name.rindex(os.sep + 'agent' + os.sep) + 1 :]}:{f.f_lineno}")
            f = f.f_back
        key = f"{arg.__name__}@{'<'.join(path)}"
        log.write(key + "\n")
        if key == target and not fired:
            fired = True
            if delay:
                threading.Timer(float(delay), power_cut).start()
            else:
                power_cut()

    sys.argv = ["edge-agent", *sys.argv[4:]]
    threading.setprofile(profile)
    sys.setprofile(profile)
    from agent.cli import main as cli_main

    code = cli_main()
    sys.setprofile(None)
    log.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
