"""Under torchrun only rank 0 writes, evaluates and trains the generator: real two-process gloo groups on CPU."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(target, *args, world_size: int = 2, timeout: float = 600) -> None:
    """Run ``target(rank, port, *args)`` in ``world_size`` fresh processes; each must exit 0."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=target, args=(rank, port, *args)) for rank in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"rank {rank} exited with {p.exitcode}"


def _env(rank: int, port: int, world_size: int = 2) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")


def _on_main_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from pipelines.core.device import Context, on_main
    from pipelines.core.errors import PipelinesError

    _env(rank, port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = Context(__import__("torch").device("cpu"), rank, 2)
    calls = Path(out) / f"calls_{rank}.txt"

    def work(value):
        calls.write_text("called")
        return {"value": value, "by": rank}

    got = on_main(ctx, work, 7)
    assert got == {"value": 7, "by": 0}, got

    def fail():
        raise ValueError("no space left")

    try:
        on_main(ctx, fail)
    except PipelinesError as exc:
        assert rank == 1 and "rank 0 failed (ValueError: no space left)" in str(exc)
    except ValueError:
        assert rank == 0
    else:
        raise AssertionError("on_main swallowed the error")
    dist.destroy_process_group()


def test_on_main_runs_on_rank_0_and_every_rank_gets_the_result_or_the_error(tmp_path):
    _spawn(_on_main_worker, str(tmp_path), timeout=120)
    assert (tmp_path / "calls_0.txt").is_file() and not (tmp_path / "calls_1.txt").exists()


def _dfu_worker(rank: int, port: int, root: str, output: str) -> None:
    _env(rank, port)
    written: list[str] = []
    if rank:  # every file the project writes lands by os.replace (atomic writes); record rank 1's, and its folders
        replace, mkdir = os.replace, os.mkdir

        def recording_replace(src, dst, *a, **k):
            written.append(str(dst))
            return replace(src, dst, *a, **k)

        def recording_mkdir(path, *a, **k):
            written.append(str(path))
            return mkdir(path, *a, **k)

        os.replace, os.mkdir = recording_replace, recording_mkdir
    from pipelines.cli import main
    from pipelines.tasks import dfu

    sets = [f"{k}={v}" for k, v in dfu.SMOKE_OVERRIDES.items()]  # the contract test's smallest run, and
    sets += ["pseudo.threshold=0.05", "pseudo.max_per_class=4"]  # pseudo-labels that rank 1 must receive
    code = main(["run", "dfu", "--demo", "--data-root", root, "--output", output, "--device", "cpu",
                 *[a for s in sets for a in ("--set", s)]])
    assert code == 0, code
    Path(output, f"written_by_rank{rank}.json").write_text(json.dumps(written))


@pytest.mark.slow
def test_dfu_under_torchrun_writes_evaluates_and_synthesises_on_rank_0_only(tmp_path):
    from pipelines.tasks import dfu

    root = dfu.prepare_demo(tmp_path / "data", small=True)
    _spawn(_dfu_worker, str(root), str(tmp_path / "runs"))
    written = json.loads((tmp_path / "runs" / "written_by_rank1.json").read_text())
    assert [p for p in written if Path(p).is_relative_to(tmp_path)] == []  # (torch may make its own cache folders)
    run = tmp_path / "runs" / "dfu" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    info = metrics["info"]
    assert info["stages"] == ["baseline", "pseudo1", "synthetic"] and sum(info["pseudo_labels"]["round1"].values())
    assert sum(info["synthetic_images"].values()) > 0
    members = [run / "stages" / s / "efficientnet_b0" for s in info["stages"]]
    for folder in (run, run / "synthesis", *members):
        assert {"config.yaml", "environment.json", "split.csv"} <= {p.name for p in folder.iterdir()}, folder
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
