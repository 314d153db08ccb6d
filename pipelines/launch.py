"""Start a Streamlit page of this checkout (the clinician app, the results dashboards) as a local server.

The pages live beside the package (``apps/``, ``dashboards/``), thin over ``pipelines``; Streamlit runs them
in its own process, bound to localhost unless the user asks for another address.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.core.errors import ConfigError

__all__ = ["PAGES", "page_path", "streamlit_command", "launch"]

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"app": ROOT / "apps" / "clinician.py", "dashboard": ROOT / "dashboards" / "results.py"}
MAX_UPLOAD_MB = 50  # Streamlit refuses larger uploads before they reach the page


def page_path(name: str) -> Path:
    path = PAGES[name]
    if not path.is_file():
        raise ConfigError(f"{path} not found: the Streamlit pages ship with the source tree; "
                          "install from a checkout (pip install -e .)")
    return path


def streamlit_command(name: str, page_args: Sequence[str], host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The command line that serves page ``name`` headless on ``host:port`` with ``page_args`` for the page."""
    return [
        sys.executable, "-m", "streamlit", "run", str(page_path(name)),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--", *page_args,
    ]


def launch(name: str, page_args: Sequence[str], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the page until interrupted; returns Streamlit's exit status."""
    print(f"serving {name} on http://{host}:{port} (Ctrl+C stops it)", file=sys.stderr, flush=True)
    try:
        return subprocess.call(streamlit_command(name, page_args, host, port))
    except KeyboardInterrupt:
        return 0
