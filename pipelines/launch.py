"""Start a Streamlit page (the clinician app, the results dashboards) as a local server.

The pages live in the repository's ``apps/`` and ``dashboards/``, thin over ``pipelines``. A checkout (or an
editable install) serves them from there; a wheel ships them as data files under
``PREFIX/share/pipelines/`` (``[tool.setuptools.data-files]`` in pyproject.toml), found here through
``sysconfig``'s data path, so ``pip install .`` and ``pipelines dashboard`` work from any folder.
Streamlit runs in its own process, bound to localhost unless asked otherwise; a SIGTERM or SIGHUP to
``pipelines`` is passed on to it and waited for, so no server is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from pipelines.core.errors import ConfigError

__all__ = ["PAGES", "page_dirs", "page_path", "streamlit_command", "launch"]

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"app": Path("apps") / "clinician.py", "dashboard": Path("dashboards") / "results.py"}
"""Each page's path relative to the repository root, which is also its path under ``share/pipelines/``."""
MAX_UPLOAD_MB = 50  # Streamlit refuses larger uploads before they reach the page
STOP_SECONDS = 10.0  # how long a stopping server may take before it is killed
FORWARDED = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)


def page_dirs() -> list[Path]:
    """Where pages are looked for, in order: the source tree beside the package, then the installed data
    folders (this environment's prefix, then the user's base for ``pip install --user``)."""
    dirs = [ROOT]
    schemes = [None, f"{os.name}_user"] if f"{os.name}_user" in sysconfig.get_scheme_names() else [None]
    for scheme in schemes:
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        except KeyError:
            continue
        dirs.append(Path(data) / "share" / "pipelines")
    return list(dict.fromkeys(dirs))


def page_path(name: str) -> Path:
    """The file of page ``name`` (``app`` or ``dashboard``)."""
    if name not in PAGES:
        raise ConfigError(f"unknown page '{name}'; choose one of {', '.join(PAGES)}")
    for folder in page_dirs():
        path = folder / PAGES[name]
        if path.is_file():
            return path
    raise ConfigError(f"{PAGES[name]} not found in {', '.join(map(str, page_dirs()))}; reinstall pipelines "
                      "(pip install .) or run from a checkout")


def streamlit_command(name: str, page_args: Sequence[str], host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The command line that serves page ``name`` headless on ``host:port`` with ``page_args`` for the page."""
    return [
        sys.executable, "-m", "streamlit", "run", str(page_path(name)),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",  # pages for clinicians and analysts: no Deploy button, no developer menu
        "--", *page_args,
    ]


def launch(name: str, page_args: Sequence[str], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the page until interrupted or terminated; returns Streamlit's exit status (0 after Ctrl+C)."""
    command = streamlit_command(name, page_args, host, port)
    print(f"serving {name} on http://{host}:{port} (Ctrl+C stops it)", file=sys.stderr, flush=True)
    child = subprocess.Popen(command)

    def forward(signum, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return child.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the child too; let it finish
        return 0 if _stop(child, None) in (0, -signal.SIGINT) else 1
    finally:
        _stop(child, signal.SIGTERM)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(child: subprocess.Popen, sig: int | None) -> int:
    """Wait for the child (after sending ``sig``), killing it if it takes longer than STOP_SECONDS."""
    if child.poll() is None and sig is not None:
        child.send_signal(sig)
    try:
        return child.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()
    except KeyboardInterrupt:
        child.kill()
        return child.wait()
