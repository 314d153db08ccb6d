"""The ``pipelines`` command.

    pipelines run TASK [--config FILE] [--set key=value ...] [--data-root PATH] [--output DIR]
                       [--device auto|cpu|cuda] [--demo] [--resume RUN_DIR]
    pipelines list [tasks|backbones|keys] [TASK]
    pipelines eval RUN_DIR [--data-root PATH] [--device ...] [--corruptions [--reference RUN_DIR]]
    pipelines export RUN_DIR [--output DIR] [--opset N]
    pipelines export RUN_DIR --name NAME [--store DIR] [--force]
    pipelines dashboard [RUNS_DIR ...] [--host ADDRESS] [--port N]
    pipelines app [--store DIR] [--host ADDRESS] [--port N]
    pipelines tile --model RUN_DIR|WEIGHTS INPUT... --output DIR [--tile N] [--overlap N]
                   [--workers N | --scheduler ADDRESS] [--vectorize [--format geojson|gpkg|fgb] [--min-area M2]
                   [--fill-holes M2] [--simplify M] [--regularize]] [--probabilities] [--overwrite]
    pipelines score FOOTPRINTS REFERENCE [--area FILE] [--iou 0.5] [--min-area 20] [--output FILE.csv]
    pipelines synth --images DIR --masks DIR --output DIR [--size N] [--steps N] [--local-enhancer] ...

User mistakes end with one line ``error: ...`` and exit status 2; the last line ``run`` prints on
stdout is the run folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipelines.commands.score import add_score_parser
from pipelines.commands.tile import add_tile_parser
from pipelines.core.errors import ConfigError, PipelinesError, one_line
from pipelines.runs.folder import METRICS_FILE

log = logging.getLogger("pipelines")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage dump
        raise ConfigError(f"{message}; see '{self.prog} --help'")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipelines", description="Applied computer-vision pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train and evaluate a task into a new run folder")
    run.add_argument("task", help="task name (pipelines list tasks)")
    run.add_argument("--config", help="YAML file with keys to change")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change one config key, e.g. --set train.epochs=3 (repeatable)")
    run.add_argument("--data-root", help="where the data set lives (sets data.root)")
    run.add_argument("--output", default="runs", help="parent folder of run folders (default: runs)")
    run.add_argument("--name", help="run folder name (default: train, or demo with --demo)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    run.add_argument("--demo", action="store_true", help="synthetic data in the real layout, short schedule")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its last checkpoint")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list tasks, backbones, or a task's config keys")
    lst.add_argument("what", nargs="?", default="all", choices=("all", "tasks", "backbones", "keys"))
    lst.add_argument("task", nargs="?", help="task whose config keys to show (with 'keys')")
    lst.set_defaults(func=cmd_list)

    ev = sub.add_parser("eval", help="evaluate a run folder's best checkpoint again")
    ev.add_argument("run_dir")
    ev.add_argument("--data-root", help="where the data set lives now, if it moved")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    ev.add_argument("--precision", help="fp32 | bf16 | int8 | auto: evaluate at this inference precision (auto: "
                    "the fastest within tolerance of fp32 on validation; recorded for 'pipelines export'); "
                    "default: the run's eval.precision")
    ev.add_argument("--corruptions", action="store_true",
                    help="score the test split under MedMNIST-C corruptions -> robustness.csv")
    ev.add_argument("--reference", metavar="RUN_DIR",
                    help="with --corruptions: a reference run for BE and rBE (robustness_relative.csv)")
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="export a run's best model to ONNX (BN fused, parity-checked), "
                        "or with --name into the model store the app reads (safetensors + model card)")
    ex.add_argument("run_dir")
    ex.add_argument("--output", help="folder for model.onnx and model.json (default: RUN_DIR/export)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    ex.add_argument("--name", help="model store entry to write: STORE/NAME/{model.safetensors,card.json,card.md}")
    ex.add_argument("--store", default="models", help="model store folder (default: models)")
    ex.add_argument("--force", action="store_true", help="replace a store entry of the same name")
    ex.set_defaults(func=cmd_export)

    for name, page, help_text in (
        ("dashboard", "runs", "results dashboards over run folders (Streamlit, localhost)"),
        ("app", "store", "the clinician upload app over the model store (Streamlit, localhost)"),
    ):
        srv = sub.add_parser(name, help=help_text)
        if page == "runs":
            srv.add_argument("runs", nargs="*", default=["runs"], help="folders holding run folders (default: runs)")
        else:
            srv.add_argument("--store", default="models", help="model store folder (default: models)")
            srv.add_argument("--audit", metavar="FILE", help="append one JSON line per prediction to FILE (time, "
                             "model and weights SHA-256, image SHA-256, output, threshold, referred; never the "
                             "image); off by default")
        srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
        srv.add_argument("--port", type=int, default=8501, help="port (default: 8501)")
        srv.set_defaults(func=cmd_serve, page=name)

    add_tile_parser(sub)

    add_score_parser(sub)

    sy = sub.add_parser("synth", help="train pix2pixHD from wound masks to photos (paired by file stem); "
                        "resumable; sample grids and the generator in --output")
    sy.add_argument("--images", required=True, metavar="DIR", help="folder of photos")
    sy.add_argument("--masks", required=True, metavar="DIR", help="folder of masks (0/255 or 0/1), same stems")
    sy.add_argument("--output", required=True, metavar="DIR", help="folder for generator.safetensors, history.csv, "
                    "samples/; run again on it to continue")
    sy.add_argument("--size", type=int, default=128, help="training side in px (default: 128)")
    sy.add_argument("--steps", type=int, default=2000, help="total optimiser steps (default: 2000)")
    sy.add_argument("--batch-size", type=int, default=4, help="pairs per step (default: 4)")
    sy.add_argument("--ngf", type=int, default=64, help="generator width (default: 64, pix2pixHD's)")
    sy.add_argument("--n-downsampling", type=int, default=4, help="generator downsamplings (default: 4)")
    sy.add_argument("--n-blocks", type=int, default=9, help="generator residual blocks (default: 9)")
    sy.add_argument("--local-enhancer", action="store_true", help="pix2pixHD's G2: global generator at half "
                    "resolution plus a local branch (--ngf is the local branch's width)")
    sy.add_argument("--edges", action="store_true", help="add the wounds' instance edges as a third channel")
    sy.add_argument("--vgg-weights", metavar="PATH", help="local torchvision VGG19 weights: adds the VGG loss")
    sy.add_argument("--sample-every", type=int, default=200, help="steps between sample grids and checkpoints "
                    "(default: 200)")
    sy.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    sy.add_argument("--seed", type=int, default=0, help="initialisation, batches, flips (default: 0)")
    sy.add_argument("--config", help="YAML file of option names (batch_size: 8) to change")
    sy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change one option by its name, e.g. --set batch_size=8 (repeatable)")
    sy.set_defaults(func=cmd_synth)
    return parser


def resolve_config(task_module, args) -> dict:
    """defaults < demo overrides < --config < --set < --data-root; then checked."""
    from pipelines.config import apply_overrides, load_yaml, merge

    cfg = task_module.defaults()
    if args.demo:
        cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in task_module.DEMO_OVERRIDES.items()], "demo settings")
    if args.config:
        cfg = merge(cfg, load_yaml(args.config), args.config)
    cfg = apply_overrides(cfg, args.overrides)
    if args.data_root:
        cfg["data"]["root"] = args.data_root
    return cfg


def cmd_run(args) -> int:
    from pipelines.config import apply_overrides
    from pipelines.core import device as distributed
    from pipelines.runs import create_run_dir, read_config, write_config, write_environment
    from pipelines.tasks import get_task

    if args.resume:
        run_dir = Path(args.resume)
        cfg = read_config(run_dir)
        if cfg.get("run", {}).get("task") != args.task:
            raise ConfigError(f"{run_dir} is a {cfg.get('run', {}).get('task')} run, not {args.task}")
        if args.config or args.demo:
            raise ConfigError("--resume continues a run as it was configured; drop --config/--demo")
        task = get_task(args.task)
        cfg = apply_overrides(cfg, args.overrides)
        if args.data_root:
            cfg["data"]["root"] = str(Path(args.data_root).resolve())
    else:
        task = get_task(args.task)
        cfg = resolve_config(task, args)
    if not cfg["model"].get("pretrained_hub"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task.validate(cfg)
    ctx = distributed.setup(args.device)
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one voice under torchrun
    if not args.resume:
        if args.demo and not args.data_root:
            cfg["data"]["root"] = str(task.prepare_demo(Path("data") / "demo")) if ctx.is_main else None
            cfg["data"]["root"] = distributed.broadcast_object(ctx, cfg["data"]["root"])
            log.info("demo: SYNTHETIC data in the real layout at %s; its numbers say nothing about real data",
                     cfg["data"]["root"])
        cfg["data"]["root"] = str(Path(cfg["data"]["root"]).expanduser().resolve())
        cfg["run"] = {"task": args.task, "demo": bool(args.demo)}
        data = task.load_data(cfg)  # before the run folder exists: bad data leaves nothing behind
        run_dir = None
        if ctx.is_main:
            run_dir = create_run_dir(args.output, args.task, args.name or ("demo" if args.demo else "train"))
        run_dir = Path(distributed.broadcast_object(ctx, str(run_dir)))
    else:
        data = None
    cfg["run"]["device"] = str(ctx.device)
    cfg["run"]["world_size"] = ctx.world_size
    if ctx.is_main:
        write_config(run_dir, cfg)
        write_environment(run_dir, str(ctx.device), {"world_size": ctx.world_size})
        log.info("run folder: %s", run_dir)
    try:
        task.train(cfg, run_dir, ctx, data)
    except KeyboardInterrupt:
        raise ConfigError(f"interrupted; continue with: pipelines run {args.task} --resume {run_dir}") from None
    except Exception:
        if ctx.is_main and not args.resume:
            _remove_if_untrained(run_dir)
        raise
    if ctx.is_main:
        from pipelines.training.loggers import finish_loggers

        finish_loggers(run_dir)  # after evaluation: final metrics and plots to MLflow / TensorBoard
        _summary(task, run_dir)
        print(run_dir.resolve(), flush=True)
    return 0


def _remove_if_untrained(run_dir: Path) -> None:
    """A new run that failed before any epoch was committed (a bad weights file, an image that fails to
    decode) holds only what it started with: remove it, so the dashboards do not list empty runs. A run with
    a committed epoch anywhere in it (DFU members, a generator) stays, to be resumed."""
    import shutil

    from pipelines.runs import STATE_NAME

    if run_dir.is_dir() and not any(run_dir.rglob(STATE_NAME)):
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s: the run failed before its first epoch was saved", run_dir)


def _summary(task, run_dir: Path) -> None:
    """The task's headline lines for val and test (its ``summary_lines``), then the run's note."""
    import json

    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    metrics = json.loads(path.read_text())
    for split in ("val", "test"):
        if metrics.get(split):
            for line in task.summary_lines(split, metrics[split]):
                log.info("%s", line)
    note = metrics.get("info", {}).get("note")
    if note:
        log.info("note: %s", note)


def cmd_eval(args) -> int:
    from pipelines.core import device as distributed
    from pipelines.runs import check_run_dir, read_config, write_config
    from pipelines.tasks import get_task

    run_dir = check_run_dir(args.run_dir)
    cfg = read_config(run_dir)
    task = get_task(cfg.get("run", {}).get("task", ""))
    if args.precision:
        from pipelines.core.precision import check_precision

        if "precision" not in cfg.get("eval", {}):
            raise ConfigError(f"{run_dir} has no eval.precision in its config.yaml (made before the setting "
                              "existed); add 'precision: fp32' under eval: there, or train it again")
        cfg["eval"]["precision"] = check_precision(args.precision, "--precision")
    if args.data_root:
        cfg["data"]["root"] = str(Path(args.data_root).expanduser().resolve())
    if args.precision or args.data_root:
        write_config(run_dir, cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx = distributed.setup(args.device)
    if args.reference and not args.corruptions:
        raise ConfigError("--reference goes with --corruptions")
    if args.corruptions:
        from pipelines.engine.robustness import evaluate_run_robustness

        evaluate_run_robustness(task, cfg, run_dir, args.reference, ctx.device)
    else:
        task.evaluate(cfg, run_dir, ctx)
        _summary(task, run_dir)
    print(run_dir.resolve(), flush=True)
    return 0


def cmd_export(args) -> int:
    if args.name:
        return _export_to_store(args)
    from pipelines.backbones.inference import fuse_batchnorm
    from pipelines.backbones.onnx_export import export_onnx, onnx_model_card, onnx_opset
    from pipelines.core.io import write_json
    from pipelines.models import load_model
    from pipelines.runs import check_run_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if Path(args.run_dir).is_dir():
        check_run_dir(args.run_dir)
    loaded = load_model(args.run_dir)
    card = onnx_model_card(loaded.spec, "model.onnx", args.opset)  # refuses kinds without a one-image graph
    out = Path(args.output) if args.output else Path(args.run_dir) / "export"
    model, report = fuse_batchnorm(loaded.model)
    shape = (loaded.spec.input.channels, *loaded.spec.input.size)
    diff, scale = export_onnx(model, out / "model.onnx", shape, opset=args.opset)
    written = onnx_opset(out / "model.onnx")
    if written != args.opset:
        log.info("note: --opset %d was asked for; the exporter wrote opset %d (model.json says so)",
                 args.opset, written)
    write_json(out / "model.json", {
        **card, "opset": written,
        "batchnorm_fused": report.before - report.after, "batchnorm_left": report.after,
        "parity": {"max_abs_diff": diff, "output_scale": scale, "input": "standard normal, batch 3"},
        "source_run": str(Path(args.run_dir).resolve()),
    })
    log.info("%s: %d BatchNorm layers fused; onnxruntime vs PyTorch max abs difference %.2e (outputs up to %.1f)",
             loaded.spec.arch, report.before - report.after, diff, scale)
    print((out / "model.onnx").resolve(), flush=True)
    return 0


def _export_to_store(args) -> int:
    from pipelines.model_store import export_to_store

    if args.output:
        raise ConfigError("--output is for the ONNX export; with --name the model goes to --store DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = export_to_store(args.run_dir, args.name, args.store, force=args.force)
    log.info("model %s with its card in %s; 'pipelines app --store %s' serves it", args.name, folder, args.store)
    print(folder.resolve(), flush=True)
    return 0


def cmd_serve(args) -> int:
    from pipelines.launch import launch

    if args.page == "dashboard":
        missing = [r for r in args.runs if not Path(r).is_dir()]
        if missing:
            raise ConfigError(f"runs folder {missing[0]} not found; pass the folder holding your run folders")
        page_args = [str(Path(r).resolve()) for r in args.runs]
    else:
        if not Path(args.store).is_dir():
            raise ConfigError(f"model store {args.store} not found; "
                              "fill it with 'pipelines export RUN_DIR --name NAME --store DIR'")
        page_args = ["--store", str(Path(args.store).resolve())]
        if args.audit:
            page_args += ["--audit", str(Path(args.audit).resolve())]
    return launch(args.page, page_args, args.host, args.port)


def cmd_synth(args) -> int:
    from pipelines.config import apply_settings
    from pipelines.synthesis import Pix2PixHDSpec, mask_pairs, read_mask_pairs, summarize_history, train_pix2pixhd

    args = apply_settings(args, "synth")
    spec = Pix2PixHDSpec(input_nc=3 if args.edges else 2, ngf=args.ngf, n_downsampling=args.n_downsampling,
                         n_blocks=args.n_blocks, local_enhancer=args.local_enhancer, size=args.size,
                         channels=("background", "wound", "edges")[: 3 if args.edges else 2])
    if args.vgg_weights and not Path(args.vgg_weights).is_file():
        raise ConfigError(f"--vgg-weights {args.vgg_weights} not found; pass a local torchvision VGG19 weights file "
                          "or leave the option out")
    label_maps, images, _ = read_mask_pairs(args.images, args.masks, size=args.size, edges=args.edges)
    out = Path(args.output)
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "overrides")}
    try:  # config.yaml holds these options: '--config OUTPUT/config.yaml' takes them back
        history = train_pix2pixhd(label_maps, images, spec, out, steps=args.steps, batch_size=args.batch_size,
                                  vgg_weights=args.vgg_weights, device=args.device, seed=args.seed,
                                  sample_every=args.sample_every, config=options,
                                  pairs=mask_pairs(args.images, args.masks))
    except KeyboardInterrupt:
        raise ConfigError(f"interrupted; run the same command again to continue from {out / 'last_state.pt'}") from None
    log.info("%s", summarize_history(history))
    log.info("sample grid (label map | generated | real): %s", out / "samples" / "final.png")
    print(out.resolve(), flush=True)
    return 0


def cmd_list(args) -> int:
    from pipelines.tasks import TASKS, get_task

    if args.what in ("all", "tasks"):
        print("tasks:")
        for name in TASKS:
            print(f"  {name:12s} {get_task(name).DESCRIPTION}")
    if args.what in ("all", "backbones"):
        from pipelines.backbones import backbone_entries

        print("backbones:")
        for entry in backbone_entries():
            size = f"  ({entry.input_size} px only)" if entry.input_size else ""
            print(f"  {entry.name:24s} {entry.family}{size}")
    if args.what == "keys":
        if not args.task:
            raise ConfigError(f"'pipelines list keys' needs a task, e.g. pipelines list keys {next(iter(TASKS))}")
        from pipelines.config import defaults_text

        print(defaults_text(get_task(args.task).DEFAULTS), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    try:
        args = _build_parser().parse_args(argv)
        return args.func(args)
    except PipelinesError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
