"""Train a one-shot detector: ``python tools/train.py --config configs/synthetic.yaml [key=value ...]``.

A run folder (``--output-dir``, default ``train.output_dir``) belongs to one run: a fresh run
starts only in a missing or empty folder (``--overwrite`` empties a previous run's folder first).
``--resume`` continues the folder's newest readable checkpoint exactly, with the config stored in
it (``--config`` is then optional); overrides may change only the schedule length, logging,
checkpointing and evaluation. ``--resume FILE`` continues that checkpoint; a value holding ``=``
is an override, never a checkpoint. Overrides may come anywhere among the options.

Multi-process: ``torchrun --nproc_per_node N tools/train.py --config ...`` (DDP; ``nccl`` on GPUs,
``gloo`` on CPUs). Exit codes: 0 done, 1 the run failed (one line; its last good checkpoint is
kept), 2 a mistake in the command line, config or data (one line).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded, report, warn  # noqa: E402
from detector.errors import RunError, UserError  # noqa: E402

AUTO = "<newest checkpoint of the run folder>"


class ResumeAction(argparse.Action):
    """``--resume [CHECKPOINT_OR_FOLDER]``; a value holding ``=`` is kept as an override."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is not None and value != AUTO and "=" in value:
            namespace.early_overrides = list(getattr(namespace, "early_overrides", None) or []) + [value]
            value = None
        setattr(namespace, self.dest, value or AUTO)


def _resume_flag_alone(argv: list[str]) -> list[str]:
    """``--resume key=value`` -> ``--resume=<auto> key=value``: the override stays in its place
    among the others (their order decides which wins)."""
    out = list(argv)
    for i, token in enumerate(out[:-1]):
        nxt = out[i + 1]
        if token == "--resume" and "=" in nxt and not nxt.startswith("-"):
            out[i] = f"--resume={AUTO}"
    return out


def parse_args(argv=None) -> argparse.Namespace:
    argv = _resume_flag_alone(sys.argv[1:] if argv is None else argv)
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default="", help="YAML config file (configs/*.yaml); optional with --resume")
    p.add_argument("--output-dir", default="", help="run folder (overrides train.output_dir)")
    p.add_argument("--resume", nargs="?", action=ResumeAction, default="", metavar="CHECKPOINT",
                   help="continue the run folder's newest readable checkpoint, or this checkpoint file / folder")
    p.add_argument("--overwrite", action="store_true", help="empty the run folder of a previous run first")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.split=2 train.epochs=30")
    args = p.parse(argv)
    args.overrides = list(getattr(args, "early_overrides", None) or []) + list(args.overrides)
    if not args.config and not args.resume:
        p.error("--config is required (unless --resume continues a run folder)")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    return args


def prepare_fresh(args):
    """``(cfg, None, [])`` of a fresh run; refuses a folder that holds another run."""
    from detector.config import load_config
    from detector.run_folder import check_fresh

    overrides = list(args.overrides) + ([f"train.output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    check_fresh(cfg.train.output_dir, overwrite=args.overwrite)
    return cfg, None, []


def prepare_resume(args):
    """``(cfg, checkpoint, warnings)`` of a resumed run: the stored config plus the allowed
    overrides; a warning for each unreadable checkpoint passed over."""
    from detector.config import load_config
    from detector.run_folder import check_fresh, find_resume_checkpoint, resume_config, resume_folder

    named = "" if args.resume == AUTO else args.resume
    config_dir = load_config(args.config, args.overrides).train.output_dir if args.config and not args.output_dir else None
    folder = resume_folder(args.output_dir, named, config_dir)
    checkpoint, state, warnings = find_resume_checkpoint(named or folder)
    if os.path.abspath(os.path.dirname(os.path.abspath(checkpoint))) != os.path.abspath(folder):
        check_fresh(folder)  # a checkpoint continued into another folder: that folder must be free
    cfg = resume_config(state, checkpoint, args.overrides, args.config)
    cfg.train.output_dir = folder
    return cfg, checkpoint, warnings


def run(args) -> int:
    cfg, resume, warnings = prepare_resume(args) if args.resume else prepare_fresh(args)
    from detector.engine import train
    from detector.evaluation import format_metrics_table
    from detector.utils.console_log import ConsoleLog
    from detector.utils.dist import cleanup_distributed, init_distributed, is_main_process

    init_distributed()
    try:
        main_process = is_main_process()
        with ConsoleLog() if main_process else contextlib.nullcontext() as console:

            def on_start(folder: str) -> None:
                console.attach(os.path.join(folder, "train.log"))
                print(f"resuming {resume} in {folder}" if resume else f"training into {folder}", flush=True)

            for w in warnings if main_process else ():
                warn(w)
            try:
                result = train(cfg, resume=resume, progress=not args.no_progress, overwrite=args.overwrite,
                               on_start=on_start if main_process else None)
            except (UserError, RunError) as e:
                return report(e)
            if main_process:
                if result["metrics"]:
                    print(format_metrics_table(result["metrics"], per_category=False))
                print(f"output folder: {result['output_dir']}")
                print(f"checkpoint: {result['checkpoint']}")
                print(f"log: {os.path.join(result['output_dir'], 'train.log')}")
    finally:
        cleanup_distributed()
    return 0


def main(argv=None) -> int:
    return guarded(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
