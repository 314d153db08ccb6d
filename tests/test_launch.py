"""The Streamlit pages outside a checkout (a wheel in a fresh venv) and a launcher that leaves no server behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_results import write_classification_run

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the server process")
def test_sigterm_to_pipelines_dashboard_stops_its_streamlit_server(tmp_path):
    write_classification_run(tmp_path)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    wrapper = subprocess.Popen([sys.executable, "-m", "pipelines", "dashboard", str(tmp_path), "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert wrapper.poll() is None, wrapper.stderr.read()
            assert time.monotonic() < deadline, "the dashboard did not start listening in 90 s"
            time.sleep(0.3)
        servers = _children(wrapper.pid)
        assert servers, "no Streamlit child process found"
        wrapper.send_signal(signal.SIGTERM)
        wrapper.wait(30)
        deadline = time.monotonic() + 5
        while any(map(_alive, servers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, servers)), "the Streamlit server outlived pipelines dashboard"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        for pid in [*_children(wrapper.pid), wrapper.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(shutil.which("uv") is None and not (Path(sys.executable).parent / "uv").exists(),
                    reason="needs uv to build the wheel and make a venv offline")
def test_wheel_in_a_fresh_venv_serves_both_pages_from_another_folder(tmp_path):
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipelines", "apps", "dashboards"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    offline = {**os.environ, "UV_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = dict(capture_output=True, text=True, env=offline, timeout=300)
    built = subprocess.run([uv, "build", "--wheel", "--offline", "-q", "-o", str(tmp_path / "dist"), str(source)],
                           **run)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("pipelines-*.whl"))
    venv = tmp_path / "venv"
    made = subprocess.run([uv, "venv", "-q", "--offline", "-p", sys.executable, str(venv)], **run)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = subprocess.run([uv, "pip", "install", "-q", "--offline", "--no-deps", "--python", str(python),
                                str(wheel)], **run)
    assert installed.returncode == 0, installed.stderr
    # the dependencies come from this environment's site-packages (no network): a path line, not its .pth files
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **run)
    (Path(site.stdout.strip()) / "_deps_from_test_env.pth").write_text(sysconfig.get_path("purelib") + "\n")

    runs = tmp_path / "runs"
    write_classification_run(runs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import pipelines, pipelines.launch as L
        repo = Path({str(REPO)!r})
        assert repo not in Path(pipelines.__file__).resolve().parents, pipelines.__file__
        for page in ("app", "dashboard"):
            path = L.page_path(page)
            assert path.is_file() and repo not in path.resolve().parents, path
            assert Path(sys.prefix) in path.parents, path
            assert L.streamlit_command(page, [])[4] == str(path)
        from streamlit.testing.v1 import AppTest
        sys.argv = ["results.py", {str(runs)!r}]
        at = AppTest.from_file(str(L.page_path("dashboard")), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        assert list(at.dataframe[0].value["run"]) == ["breakhis/demo"]
        print("ok")
    """)
    env = {k: v for k, v in offline.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", check], cwd=elsewhere, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
