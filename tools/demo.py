"""The main job, end to end on the embedded data (the steps are :mod:`detector.demo`'s):

1. write the data that is not there yet: the ``small`` synthetic benchmark
   (``datasets/synthetic_small``), the pasted-patch set of real photos (``datasets/pasted_small``)
   and the real-photo benchmark (``datasets/realphoto``, deepforest's annotated aerial tiles);
2. stage 1 on real photos (``--stage1-config``, ``configs/pretrain_photos.yaml``): patches of
   package photos pasted as look-alikes, into ``<output-dir>_stage1``;
3. stage 2, the one-shot training of the config from stage 1's weights (frozen offline ImageNet
   MobileNetV2, features cached) for its fixed number of iterations (``train.time_budget_min`` is
   only a safety net: if it stops training early, the demo says so loudly, since its numbers then
   depend on the machine), evaluated with the one-shot protocol (seen / unseen AP50 over exemplar
   runs) on the held-out ``test`` split (``eval.split``; settings were chosen on ``val``);
4. detect one unseen-category exemplar in an unseen test image and draw it;
5. the real-photo benchmark (trees found with an exemplar tree, tiles never trained on): its
   table, ``<output-dir>/realphoto/metrics.json`` and a picture of the largest tile;
6. print both tables, the paths of ``metrics.json`` and the pictures, the wall time.

``python tools/demo.py [--config configs/synthetic.yaml] [--stage1-config configs/pretrain_photos.yaml |
--no-stage1] [--realphoto datasets/realphoto | --no-realphoto] [--output-dir outputs/demo] [--overwrite]
[key=value ...]`` (overrides apply to stage 2; stage 1 trains stage 2's model, ``model.*`` overrides
included, and takes only its data and schedule from ``--stage1-config`` and ``--stage1``).

The output folder belongs to one run: a second demo into it is refused unless ``--overwrite``
(``make demo DEMO_ARGS=--overwrite``). Its ``train.log`` keeps what the console showed.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "synthetic.yaml"), help="YAML config")
    p.add_argument("--output-dir", default="outputs/demo", help="output folder of the run")
    p.add_argument("--overwrite", action="store_true", help="empty the output folder of a previous run first")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--stage1-config", default=os.path.join(ROOT, "configs", "pretrain_photos.yaml"),
                   help="config of stage 1 (real-photo pretraining): its data and schedule; the model is --config's")
    p.add_argument("--stage1", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the stage-1 config (repeat it for several)")
    p.add_argument("--no-stage1", action="store_true", help="skip stage 1: train the config from scratch")
    p.add_argument("--realphoto", default=os.path.join(ROOT, "datasets", "realphoto"),
                   help="folder of the real-photo benchmark (written there when missing)")
    p.add_argument("--no-realphoto", action="store_true", help="skip the real-photo benchmark")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p.parse(argv)


def stage1_folder(output_dir: str) -> str:
    """Stage 1's run folder, beside stage 2's (a run folder holds one run): ``<output-dir>_stage1``."""
    return os.path.normpath(output_dir) + "_stage1"


def load_stages(args):
    """``(stage-2 config, stage-1 config or None)``. Stage 1 trains stage 2's model (stage 2 starts
    from its weights): its ``model`` section is the stage-2 config's, overrides included, whatever
    the stage-1 file says; :class:`InputError` for a ``--stage1 model.*`` override."""
    import copy

    from detector.config import load_config
    from detector.errors import InputError

    cfg = load_config(args.config, list(args.overrides) + [f"train.output_dir={args.output_dir}"])
    if args.no_stage1:
        return cfg, None
    bad = [o for o in args.stage1 if o.strip().startswith("model.")]
    if bad:
        raise InputError(f"--stage1 {bad[0]}: stage 1 trains stage 2's model; give model options to stage 2 "
                         f"(as a plain override or in --config) and both stages use them")
    stage1 = load_config(args.stage1_config, list(args.stage1) + [f"train.output_dir={stage1_folder(args.output_dir)}"])
    stage1.model = copy.deepcopy(cfg.model)
    return cfg, stage1


def main(argv=None) -> int:
    from detector.demo import run_demo
    from detector.utils.console_log import ConsoleLog

    def run(args, console) -> int:
        cfg, stage1 = load_stages(args)
        return run_demo(cfg, stage1, None if args.no_realphoto else args.realphoto, console,
                        progress=not args.no_progress, overwrite=args.overwrite)

    with ConsoleLog() as console:
        return guarded(run, parse_args(argv), console)


if __name__ == "__main__":
    sys.exit(main())
