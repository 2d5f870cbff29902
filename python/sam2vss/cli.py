"""`sam2vss` command line: synth, eval, refine, I-SAM2, bench, viz, demo. The flags of each config
dataclass are generated from its fields (`add_config_flags`: help, choices, flag names and ranges
live in the fields' metadata, config.option); the few CLI defaults that differ from the
library's are listed in CLI_DEFAULTS (and in --help).

The boundary: arguments and inputs are checked before any work, and every error ends in one
line on stderr, `sam2vss CMD: error: <file or flag>: <what> <fix>`, with no traceback unless
--debug or SAM2VSS_DEBUG=1. Exit codes: 0 done, 1 some videos failed (or an internal error),
2 bad arguments or inputs refused before work, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import tempfile
import textwrap
import time
import traceback
import typing
from dataclasses import Field, fields, replace
from pathlib import Path

from sam2vss import __version__, envs, versions
from sam2vss.config import (
    DECODERS,
    MODEL_BACKENDS,
    PRESETS,
    BenchConfig,
    EngineConfig,
    MetricConfig,
    RefineConfig,
    RunConfig,
    SynthConfig,
)
from sam2vss.data import DataError, open_dataset
from sam2vss.model import ModelConfig

log = logging.getLogger("sam2vss")

EPILOG = """examples:
  sam2vss demo                                   # synthetic set -> evaluate -> demo_out/report.md
  sam2vss synth --out data/synth --videos 8      # a VSPW-layout synthetic set with base predictions
  sam2vss eval --data data/synth --pred data/synth/pred_base --json metrics.json
  sam2vss eval --data VSPW_480p --pred results/ --split val --per-video
  sam2vss refine --data VSPW_480p --pred base/ --out refined/ --checkpoint sam2.1_hiera_large.pt --model l
  sam2vss refine --data data/synth --pred data/synth/pred_base --out refined/ --masks superpixel
  sam2vss sweep --data data/synth --pred data/synth/pred_base --out sweep/ --masks superpixel \\
      --param superpixel_size --values 64,256   # -> sweep/sweep.md, .csv, .json, .png
  sam2vss viz --data data/synth --pred base=data/synth/pred_base --pred refined=refined/ --out pictures/

exit codes: 0 done, 1 some videos failed (the others are kept), 2 bad arguments or inputs refused
before any work, 130 interrupted (Ctrl-C). Errors are one line, `sam2vss CMD: error: ...`;
--debug (or SAM2VSS_DEBUG=1) also prints the traceback.
"""


# The deliberate differences between the CLI's defaults and the library's (the config dataclasses'
# defaults and the entry points' keyword defaults); every other default is the library's, which
# tests/test_cli.py checks field by field. Command -> {flag dest: (CLI default, what and why)}.
CLI_DEFAULTS: dict[str, dict[str, tuple[object, str]]] = {
    "refine": {
        "checkpoint": (
            None,
            "none given: --masks sam2 and instances refuse to run, where the library builds random"
            " weights that find no masks; --checkpoint none asks for them",
        ),
        "vote_scope": (
            None,
            "masklet, or frame with --masks superpixel: chosen from --masks, since the library"
            " refuses superpixels with masklet votes",
        ),
    },
    "train-classifier": {
        "checkpoint": (
            None,
            "none given: --features sam2 and --masklets sam2 refuse to run, where the library builds"
            " random weights; --checkpoint none asks for them",
        ),
    },
    "bench": {
        "image_size": (
            256,
            "256, a CPU-sized model input (the library's is SAM2's 1024); with random weights"
            " (--checkpoint none), as the library's",
        ),
    },
}


CLI_DEFAULTS["sweep"] = CLI_DEFAULTS["refine"]  # the same refiner flags


def _differences_epilog() -> str:
    lines = ["CLI defaults that differ from the library's (all others are the config dataclasses'):"]
    for command, flags in CLI_DEFAULTS.items():
        for dest, (_, why) in flags.items():
            text = f"{command} --{dest.replace('_', '-')}: {why}"
            lines.append(textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error format (`--flag: what`, not `argument --flag: what`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message.removeprefix('argument ')}\n")


# ------------------------------------------------------------------ flags from config fields
def _dest(f: Field) -> str:
    return f.metadata.get("flag", f.name).replace("-", "_")


def _scalar(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _value_type(kind: type, optional: bool, bounds: tuple | None, item: type | None):
    """An argparse type: `none` for an Optional field, comma-separated items for a tuple, the
    field's range checked (config.option's low/high)."""

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if kind is tuple:
            return tuple(_scalar(item, x.strip()) for x in text.split(",") if x.strip())
        value = _scalar(kind, text) if kind in (int, float) else text
        if bounds is not None:
            lo, hi = bounds
            if hi is None and value < lo:
                raise argparse.ArgumentTypeError(f"must be >= {lo:g}, got {text}")
            if hi is not None and not lo <= value <= hi:
                raise argparse.ArgumentTypeError(f"must be in [{lo:g}, {hi:g}], got {text}")
        return value

    return parse


def _kind(hint) -> tuple[type, bool, type | None]:
    """(base type, Optional, tuple item type) of a field's annotation: int, float, str, bool,
    X | None, tuple[X, ...]."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple, optional, typing.get_args(hint)[0]
    return hint, optional, None


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return "none" if value is None else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    command: str,
    skip: tuple[str, ...] = (),
    override: bool = False,
) -> None:
    """One flag per field of the config dataclass `cls` (the fields' `config.option` metadata:
    help, choices, flag name, range), in an argument group. Defaults are the dataclass's, except
    CLI_DEFAULTS[command]; with `override` a flag has no default (absent from the namespace unless
    given: `_overrides`). bool fields: --flag (store_true) or, where the default is True or the
    flag overrides, --flag / --no-flag; tuples: comma-separated; Optional fields also take `none`.
    Fields without metadata (a nested config such as RefineConfig.engine) get their own group."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    differences = CLI_DEFAULTS.get(command, {})
    for f in fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        dest = _dest(f)
        kind, optional, item = _kind(hints[f.name])
        default, help_text = f.default, f.metadata["help"]
        if dest in differences:
            default, why = differences[dest]
            help_text += f" (default: {why})"
        kwargs: dict = {"dest": dest, "default": argparse.SUPPRESS if override else default}
        if kind is bool:
            negatable = override or default
            kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        else:
            kwargs["type"] = _value_type(kind, optional, f.metadata.get("range"), item)
            kwargs["choices"] = f.metadata.get("choices")
        if override:
            help_text += " (default: the --preset's)"
        elif kind is not bool and "default" not in help_text:
            help_text += f" (default {_show(default)})"
        flag = "--" + dest.replace("_", "-")
        group.add_argument(flag, help=help_text, **kwargs)


def _overrides(cls: type, a: argparse.Namespace) -> dict:
    """The fields of `cls` whose flags are in the namespace (all, unless added with `override`)."""
    return {
        f.name: getattr(a, _dest(f)) for f in fields(cls) if "help" in f.metadata and hasattr(a, _dest(f))
    }


def config_from(cls: type, a: argparse.Namespace, **given):
    """`cls` built from its flags; `given` fields take precedence."""
    return cls(**(_overrides(cls, a) | given))


def _at_least(low: int):
    return _value_type(int, False, (low, None), None)


class _Version(argparse.Action):
    """--version, with the versions of what changes results (read from package metadata)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"sam2vss {__version__} ("
            + ", ".join(f"{k} {v}" for k, v in versions().items() if k != "sam2vss")
            + ")"
        )
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from sam2vss.segmentor import SegmentorConfig

    p = _Parser(
        prog="sam2vss",
        description="SAM2 refinement, I-SAM2 segmentation and exact evaluation for video semantic"
        " segmentation.",
        epilog=EPILOG + "\n" + _differences_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument(
        "--debug", action="store_true", help="print the traceback above an error (or SAM2VSS_DEBUG=1)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "synth",
        parents=[common],
        help="write a deterministic synthetic dataset in VSPW layout",
        description="Synthetic VSS data: frames, raw VSPW masks, instance ids and a simulated base model's"
        " predictions (DIR/pred_base). Same arguments, same bytes.",
    )
    s.add_argument("--out", type=Path, required=True, help="output dataset root")
    add_config_flags(s, SynthConfig, "synthetic set", "synth")

    e = sub.add_parser(
        "eval",
        parents=[common],
        help="mIoU, WIoU, mBIoU, mVC8, mVC16 of a prediction folder",
        description="Evaluate predictions DIR/<video>/<frame>.png (class ids 0..C-1, palette or grayscale)"
        " against a VSPW or VIPSeg root, exactly as the field's reference scripts compute the metrics"
        " (METRICS.md section 8).",
    )
    e.add_argument("--data", type=Path, required=True, help="dataset root (VSPW or VIPSeg layout)")
    e.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="prediction folder, one subfolder per video; repeat as NAME=DIR (NAME: letters, digits,"
        " _.-) to compare methods: one table with each method's delta against the first",
    )
    e.add_argument("--split", default="val", help="split file name without .txt (default %(default)s)")
    e.add_argument("--layout", choices=("auto", "vspw", "vipseg"), default="auto", help=_LAYOUT_HELP)
    e.add_argument("--json", type=Path, help="write the metrics JSON here (a `methods` list per method)")
    e.add_argument("--csv", type=Path, help="write the table (methods and delta rows) as CSV here")
    e.add_argument("--pred-format", choices=("semantic", "vps"), default="semantic", help=_PRED_FORMAT_HELP)
    e.add_argument("--per-video", action="store_true", help="also print a per-video breakdown")
    e.add_argument("--workers", type=_at_least(1), default=None, help="decode threads (default: all cores)")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument(
        "--reference",
        action="store_true",
        help="use the slow per-frame numpy twin written like the reference scripts",
    )
    add_config_flags(
        e, MetricConfig, "metric semantics (METRICS.md section 8; defaults = CFFM/TV3S reference)", "eval"
    )

    r = sub.add_parser(
        "refine",
        parents=[common],
        help="refine base predictions with SAM2 (or superpixel) masklets",
        description="The paper's refiner: masklets from SAM2's mask generator propagated through"
        " windows (non-overlapping unless --window-overlap); each masklet takes the majority base"
        " class. Outputs"
        " OUT/<video>/<frame>.png; OUT/manifest.json makes reruns resume.",
    )
    src = r.add_argument_group("input (a dataset root, or one video file with its label folder)")
    src.add_argument("--data", type=Path, help="dataset root in VSPW layout (frames in data/<video>/origin)")
    src.add_argument("--pred", type=Path, help="base predictions, DIR/<video>/<frame>.png")
    src.add_argument("--pred-format", choices=("semantic", "vps"), default="semantic", help=_PRED_FORMAT_HELP)
    src.add_argument("--split", default="val", help="split file name without .txt (default %(default)s)")
    src.add_argument("--video", type=Path, help="a video file (instead of --data)")
    src.add_argument("--labels", type=Path, help="the video's base predictions, one PNG per frame")
    src.add_argument(
        "--decoder",
        choices=DECODERS,
        default="auto",
        help="frame decoder (default auto: frames for folders; torchcodec, else decord, else pyav for"
        " files); every backend returns the same frames",
    )
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds another configuration: move its videos to OUT/.superseded/<time>/ and start"
        " over (nothing is deleted)",
    )
    r.add_argument("--save-masklets", action="store_true", help=_SAVE_MASKLETS_HELP)
    _add_refiner_flags(r, "refine")

    w = sub.add_parser(
        "sweep",
        parents=[common],
        help="the paper's ablations: refine + eval per setting of one or more refiner parameters",
        description="Refines and evaluates the base predictions once per setting of the swept"
        " parameters (several --param give their grid), each into OUT/<param>=<value>/ (a refine output"
        " folder with its eval.json), then writes OUT/sweep.md (the paper's table), sweep.csv,"
        " sweep.json and sweep.png. Resumable per setting; rerunning a finished sweep writes nothing.",
    )
    w.add_argument("--data", type=Path, required=True, help="dataset root in VSPW layout")
    w.add_argument("--pred", type=Path, required=True, help="base predictions, DIR/<video>/<frame>.png")
    w.add_argument("--pred-format", choices=("semantic", "vps"), default="semantic", help=_PRED_FORMAT_HELP)
    w.add_argument("--split", default="val", help="split file name without .txt (default %(default)s)")
    w.add_argument("--decoder", choices=DECODERS, default="auto", help="frame decoder (default auto)")
    w.add_argument("--out", type=Path, required=True, help="the sweep's folder")
    w.add_argument(
        "--save-masklets", action="store_true", help=_SAVE_MASKLETS_HELP.replace("OUT/", "OUT/<setting>/")
    )
    w.add_argument(
        "--param",
        action="append",
        required=True,
        metavar="FIELD",
        help="a refiner field to sweep (window, grid, pred_iou_thresh, stability_thresh,"
        " stability_offset, superpixel_size, ..., or a fast-engine field such as memory_frames);"
        " repeat with its own --values for a grid",
    )
    w.add_argument(
        "--values",
        action="append",
        required=True,
        metavar="V1,V2,...",
        help="comma-separated values of the --param before it",
    )
    _add_refiner_flags(w, "sweep")
    add_config_flags(w, MetricConfig, "metric semantics (as eval's)", "sweep", skip=("num_classes",))

    t = sub.add_parser(
        "train-classifier",
        parents=[common],
        help="I-SAM2: train the masklet classifier (pooled encoder features + MLP)",
        description="Masklets of the training split labelled with their majority ground-truth class (pure,"
        " non-void ones only) train an MLP on masked-average-pooled encoder features (Eq. 3).",
    )
    t.add_argument("--data", type=Path, required=True, help="dataset root (VSPW layout)")
    t.add_argument("--split", default="train", help="training split (default %(default)s)")
    t.add_argument("--out", type=Path, required=True, help="classifier checkpoint to write (.pt)")
    # --image-size is the model's flag, shared: SegmentorConfig.image_size is SAM2's input too
    add_config_flags(t, SegmentorConfig, "I-SAM2 classifier", "train-classifier", skip=("image_size",))
    add_config_flags(t, ModelConfig, "SAM2 model", "train-classifier")

    sg = sub.add_parser(
        "segment",
        parents=[common],
        help="I-SAM2: segment a split with a trained masklet classifier",
        description="Classify every masklet; uncovered pixels take --base labels (I-SAM2 base) or the class"
        " of the nearest masklet. Writes OUT/<video>/<frame>.png.",
    )
    sg.add_argument("--data", type=Path, required=True, help="dataset root (VSPW layout)")
    sg.add_argument("--split", default="val", help="split (default %(default)s)")
    sg.add_argument("--classifier", type=Path, required=True, help="a train-classifier checkpoint")
    sg.add_argument("--out", type=Path, required=True, help="output prediction folder")
    sg.add_argument("--base", type=Path, default=None, help="base predictions that fill uncovered pixels")

    b = sub.add_parser(
        "bench",
        parents=[common],
        help="frames/s of the fast and reference refiners on a synthetic clip, per window size",
        description="Refines a synthetic clip whose masklets are prompted from its instance masks (so random"
        " weights give a realistic masklet count) and prints frames/s, ms/frame p50/p99, the fast pipeline's"
        " stage breakdown and, with --compare-reference, the reference measured in the same run with the"
        " label agreement.",
    )
    add_config_flags(b, BenchConfig, "benchmark", "bench")
    b.add_argument("--plot", type=Path, default=None, help="write the ms/frame-per-window plot here (PNG)")
    b.add_argument("--json", type=Path, default=None, help="write the rows here")
    b.add_argument("--data-dir", type=Path, default=Path("bench_data"), help="where the clip is generated")
    add_config_flags(b, ModelConfig, "SAM2 model", "bench")

    v = sub.add_parser(
        "viz",
        parents=[common],
        help="contact sheets, overlays and a side-by-side MP4 of prediction folders against the GT",
        description="Per video, OUT/<video>/: contact.png (sampled frames x frame | methods | GT | error map"
        " of each method against the first: green fixed, red broken, grey both wrong, white both right,"
        " light yellow GT void, as in the GT column),"
        " overlay_<method>.png (labels over the frames, masklet contours where <video>/masklets/ was"
        " saved) and side_by_side.mp4 (every frame, its frame count checked).",
    )
    v.add_argument("--data", type=Path, required=True, help="dataset root (VSPW or VIPSeg layout)")
    v.add_argument(
        "--pred",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="prediction folder, DIR/<video>/<frame>.png; repeat as NAME=DIR: the error maps compare"
        " each method with the first",
    )
    v.add_argument("--out", type=Path, required=True, help="output folder (never inside an input)")
    v.add_argument("--split", default="val", help="split file name without .txt (default %(default)s)")
    v.add_argument(
        "--layout",
        choices=("auto", "vspw", "vipseg"),
        default="auto",
        help=_LAYOUT_HELP,
    )
    v.add_argument(
        "--video", action="append", default=None, help="a video of the split (repeat; default: all)"
    )
    v.add_argument(
        "--frames",
        type=_at_least(1),
        default=4,
        help="contact-sheet rows: frames sampled evenly over the video (default %(default)s)",
    )

    m = sub.add_parser(
        "demo",
        parents=[common],
        help="the main job on its built-in default: synthesize, refine, evaluate, report",
        description="Generates a small synthetic set, refines its simulated base predictions (superpixel"
        " masklets, or SAM2 with --checkpoint), evaluates both and writes DIR/report.md.",
    )
    m.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default %(default)s)")
    m.add_argument("--videos", type=int, default=3, help="synthetic val videos (default %(default)s)")
    m.add_argument("--frames", type=int, default=24, help="frames per video (default %(default)s)")
    m.add_argument(
        "--checkpoint",
        default=None,
        help="a SAM2 checkpoint: refine with SAM2 masklets instead of superpixels",
    )
    m.add_argument("--model", default="sam2.1_hiera_t", help="model of --checkpoint (default %(default)s)")
    m.add_argument(
        "--image-size",
        type=_at_least(128),
        default=None,
        help="SAM2's input size with --checkpoint (default: the model's 1024; 256 runs random weights"
        " quickly)",
    )
    return p


def _add_refiner_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The refiner's flags, shared by refine and sweep: runner, refiner, engine overrides, model."""
    add_config_flags(parser, RunConfig, "scale-out", command)
    add_config_flags(parser, RefineConfig, "refiner (defaults: the paper's settings)", command)
    add_config_flags(
        parser,
        EngineConfig,
        "fast-pipeline engine: each flag overrides the --preset's value (the reference ignores them)",
        command,
        override=True,
    )
    add_config_flags(parser, ModelConfig, "SAM2 model", command)


def cmd_synth(a: argparse.Namespace) -> int:
    from sam2vss.synth import synthesize

    cfg = config_from(SynthConfig, a)
    t0 = time.perf_counter()
    synthesize(a.out, cfg, progress=not a.quiet)
    print(
        f"wrote {a.out} ({cfg.videos} val + {cfg.train_videos} train videos x {cfg.frames} frames,"
        f" {time.perf_counter() - t0:.1f} s); base predictions in {a.out / 'pred_base'}"
    )
    return 0


_METHOD_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def eval_methods(values: list[str]) -> list[tuple[str, Path]]:
    """--pred values as (name, folder): NAME=DIR where NAME is a plain word, else the whole value
    is a path (so `OUT/window=4` stays a folder). Several folders need names."""
    methods = []
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and _METHOD_NAME.fullmatch(name) and folder:
            methods.append((name, Path(folder)))
        else:
            methods.append((None, Path(value)))
    if len(methods) > 1 and any(name is None for name, _ in methods):
        unnamed = next(str(d) for name, d in methods if name is None)
        named = " ".join(f"--pred {name or _suggest_name(d, k)}={d}" for k, (name, d) in enumerate(methods))
        raise ValueError(
            f"--pred {unnamed}: several prediction folders need a name each; pass --pred NAME=DIR,"
            f" e.g. {named}"
        )
    names = [name or str(folder) for name, folder in methods]
    if len(set(names)) < len(names):
        raise ValueError(f"--pred: method names repeat ({', '.join(names)}); give each folder its own NAME")
    return [(name, folder) for name, (_, folder) in zip(names, methods, strict=True)]


def _suggest_name(folder: Path, k: int) -> str:
    """A method name for a folder in an error's example: its last part as a plain word."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("_.")
    return name or f"method{k + 1}"


def cmd_eval(a: argparse.Namespace) -> int:
    from sam2vss.data import open_dataset
    from sam2vss.outdir import check_writable

    cfg = config_from(MetricConfig, a)
    methods = eval_methods(a.pred)
    device = _device(a.device) if a.device is not None else None
    for target, flag in ((a.json, "--json"), (a.csv, "--csv")):
        if target:
            check_writable(target, flag, is_file=True)  # before the work, not after it
    dataset = open_dataset(a.data, a.layout)
    with contextlib.ExitStack() as stack:
        folders = [d for _, d in methods]
        if a.pred_format == "vps":  # converted once into a temporary semantic folder per method
            from sam2vss.panoptic import convert_vps

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam2vss_vps_")))
            for k, folder in enumerate(folders):
                convert_vps(folder, tmp / str(k), cfg.num_classes, progress=not a.quiet)
            folders = [tmp / str(k) for k in range(len(folders))]
        return _eval_run(a, cfg, dataset, methods, folders, device)


def _eval_run(a, cfg, dataset, methods, folders, device) -> int:
    from sam2vss.evaluate import describe_counts, evaluate_methods, format_table, metric_deltas
    from sam2vss.metrics import summarize
    from sam2vss.sinks import write_json

    t0 = time.perf_counter()
    if a.reference:
        from sam2vss.metrics_reference import evaluate_reference

        results = [
            (evaluate_reference(dataset, d, a.split, cfg, progress=not a.quiet), None) for d in folders
        ]
    else:
        found = evaluate_methods(dataset, folders, a.split, cfg, device, a.workers, not a.quiet)
        results = [(r.metrics, r) for r in found]
    dt = time.perf_counter() - t0
    rows = [(name, metrics) for (name, _), (metrics, _) in zip(methods, results, strict=True)]
    deltas = metric_deltas(rows) if len(rows) > 1 else []
    print(format_table(rows, deltas=deltas))
    first = rows[0][1]
    counts = describe_counts(first) + (f" ({rows[0][0]})" if len(rows) > 1 else "")
    print(counts + f"; {len(rows) * first['frames'] / dt:.1f} frames/s")
    for (name, _), (_, result) in zip(methods, results, strict=True):
        if a.per_video and result is not None:
            print()
            title = "per video" + (f" ({name})" if len(methods) > 1 else "")
            print(format_table([(v.name, summarize([v], cfg)) for v in result.videos], title=title))
    if a.json:
        entries = []
        for (name, folder), (metrics, result) in zip(methods, results, strict=True):
            entry = {"name": name, "pred": str(folder), "metrics": metrics}
            if result is not None:  # the reference twin returns dataset metrics only
                entry |= result.details(cfg)
            entries.append(entry)
        config = cfg.__dict__ | {"vc_lengths": list(cfg.vc_lengths)}
        write_json(a.json, {**first, "config": config, "methods": entries, "deltas": dict(deltas)})
        print(f"wrote {a.json}")
    if a.csv:
        _write_csv(a.csv, rows + deltas)
        print(f"wrote {a.csv}")
    return 0


def _write_csv(path: Path, rows: list[tuple[str, dict]]) -> None:
    import csv

    from sam2vss.evaluate import METRIC_COLUMNS
    from sam2vss.sinks import atomic_write

    keys = [key for _, key in METRIC_COLUMNS]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["method", *keys, "frames", "videos"])
            for name, m in rows:
                out.writerow([name, *(m.get(k, "") for k in keys), m.get("frames", ""), m.get("videos", "")])

    atomic_write(path, write)


def _device(value: str):
    """--device resolved as the model will resolve it (an indexed device on CUDA), or refused."""
    from sam2vss.model import resolve_device

    try:
        return resolve_device(value)
    except RuntimeError as e:  # torch.device's own error for a malformed string
        raise ValueError(f"--device {value!r}: not a device ({e}); use auto, cpu, cuda or cuda:N") from None


def _check_backend(a: argparse.Namespace) -> None:
    """--backend tensorrt needs CUDA and torch-tensorrt; say so before any work."""
    import importlib.util

    if a.backend != "tensorrt" or a.pipeline != "fast" or a.masks == "superpixel":
        return
    device = _device(a.device)
    if device.type != "cuda":
        raise ValueError(
            f"--backend tensorrt: needs a CUDA GPU, and the device here is {device}; use --backend"
            " eager or inductor on this machine"
        )
    if importlib.util.find_spec("torch_tensorrt") is None:
        raise ValueError(
            "--backend tensorrt: torch-tensorrt is not installed; pip install torch-tensorrt==2.14.*"
        )


_SAVE_MASKLETS_HELP = (
    "also write each frame's masklet ids to OUT/<video>/masklets/<frame>.png (16-bit: the index + 1"
    " of the masklet that won the pixel in its window, 0 = none; superpixels: segment id + 1); labels"
    " are unchanged, so no other configuration; a rerun with it redoes videos done without it"
)
_LAYOUT_HELP = "dataset layout (default %(default)s: VSPW where the root has data/, else VIPSeg's panomasks/)"
_PRED_FORMAT_HELP = (
    "semantic: label PNGs DIR/<video>/<frame>.png; vps: video-panoptic predictions as DVIS / DVIS++ /"
    " CAVIS write them (DIR/pan_pred/<video>/*.png + DIR/pred.json), converted to class maps first"
    " (METRICS.md 5.3; unclaimed pixels take the nearest segment's class)"
)


@contextlib.contextmanager
def _semantic_pred(a: argparse.Namespace, num_classes: int):
    """--pred as the semantic label folder the jobs read: as given, or with --pred-format vps the
    predictions converted into a temporary folder that lives for the run (the converted PNGs are
    the same bytes every time, so resume keys on them as on any base labels)."""
    if getattr(a, "pred_format", "semantic") != "vps":
        yield a.pred
        return
    if a.pred is None:
        raise ValueError(
            "--pred-format vps: only with --data ROOT --pred DIR (a --video's --labels are label PNGs)"
        )
    if not a.pred.is_dir():
        raise DataError(
            f"--pred {a.pred}: no such folder; pass the VPS predictions (DIR/pan_pred, DIR/pred.json)"
        )
    from sam2vss.panoptic import convert_vps

    with tempfile.TemporaryDirectory(prefix="sam2vss_vps_") as tmp:
        convert_vps(a.pred, Path(tmp), num_classes, progress=not a.quiet)
        yield Path(tmp)


def _refine_inputs(a: argparse.Namespace, labels: Path | None = None):
    """(jobs, the input folders --out must keep clear of, named by their flags). `labels`: the
    semantic base labels the jobs read (--pred converted from VPS), default --pred."""
    from sam2vss.outdir import Input
    from sam2vss.refine import dataset_jobs, video_job

    video = getattr(a, "video", None)  # sweep: --data only
    if (a.data is None) == (video is None):
        raise ValueError("--data / --video: give either --data ROOT --pred DIR, or --video FILE --labels DIR")
    if a.data is not None:
        if a.pred is None:
            raise ValueError("--pred: --data needs --pred DIR (the base predictions to refine)")
        if not a.pred.is_dir():
            raise DataError(
                f"--pred {a.pred}: no such folder; pass the base predictions, DIR/<video>/<frame>.png"
            )
        dataset = open_dataset(a.data)
        protect = [Input("the --data root", a.data, tree=False)]
        protect += [Input(f"the {d.name}/ folder of --data", d) for d in dataset.input_dirs()]
        protect.append(Input("the --pred folder", a.pred))
        return dataset_jobs(dataset, labels or a.pred, a.split, a.decoder), protect
    if a.labels is None:
        raise ValueError("--labels: --video needs --labels DIR (the video's base predictions)")
    protect = [
        Input("the --labels folder", a.labels),
        Input("the folder of --video", a.video.parent, tree=False),
    ]
    return [video_job(a.video, a.labels, a.decoder)], protect


def refine_configs(a: argparse.Namespace) -> tuple[RefineConfig, ModelConfig | None, RunConfig]:
    """The refine command's configs: the refiner (--vote-scope chosen from --masks unless given;
    the EngineConfig flags over the --preset's), the model (None for superpixels; SAM2 masklets
    need --checkpoint) and the runner."""
    overrides = _overrides(EngineConfig, a)
    cfg = config_from(
        RefineConfig,
        a,
        vote_scope=a.vote_scope or ("frame" if a.masks == "superpixel" else "masklet"),
        engine=replace(PRESETS[a.preset], **overrides) if overrides else None,
    )
    model_cfg = None
    if a.masks != "superpixel":
        if a.checkpoint is None:
            raise ValueError(
                f"--checkpoint: --masks {a.masks} needs --checkpoint PATH (a SAM2 .pt), or --checkpoint"
                " none for random weights (plumbing and speed only); --masks superpixel needs no model"
            )
        model_cfg = config_from(ModelConfig, a)
    return cfg, model_cfg, config_from(RunConfig, a)


def cmd_refine(a: argparse.Namespace) -> int:
    from sam2vss.evaluate import plural
    from sam2vss.refine import refine_jobs

    cfg, model_cfg, run = refine_configs(a)
    if model_cfg is not None:
        _device(a.device)
        _check_backend(a)
    with _semantic_pred(a, cfg.num_classes) as labels:
        jobs, protect = _refine_inputs(a, labels)
        report = refine_jobs(
            jobs,
            a.out,
            cfg,
            model_cfg,
            overwrite=a.overwrite,
            progress=not a.quiet,
            run=run,
            protect=protect,
            save_masklets=a.save_masklets,
        )
    fps = report.frames / max(report.seconds, 1e-9)
    again = len(set(report.redone) & set(report.done))
    again = f" ({again} of them again, see above)" if again else ""
    if report.done or report.failed:
        print(
            f"refined {plural(len(report.done), 'video')}{again} ({report.frames} frames,"
            f" {fps:.2f} frames/s), skipped {len(report.skipped)} already done,"
            f" {len(report.failed)} failed -> {a.out}"
        )
    else:
        print(f"nothing to do: all {plural(len(report.skipped), 'video')} already done -> {a.out}")
    if not report.failed:
        return 0
    for name, error in report.failed.items():
        _error("refine", f"video {name} failed: {error}")
    kept = len(report.done) + len(report.skipped)
    _error(
        "refine",
        f"{len(report.failed)} of {len(jobs)} videos failed ({kept} done and kept); fix the inputs named"
        f" above and rerun the same command (tracebacks in {a.out / 'manifest.json'})",
    )
    return 1


def sweep_params(names: list[str], values: list[str]) -> list[tuple[str, tuple]]:
    """--param / --values pairs as (field, parsed values): a RefineConfig or EngineConfig field
    (dashes or underscores), each value parsed and range-checked as the field's flag is."""
    from sam2vss.sweep import ENGINE_PARAMS, REFINE_PARAMS

    if len(names) != len(values):
        raise ValueError(
            f"--param / --values: give one --values per --param (got {len(names)} --param and"
            f" {len(values)} --values), e.g. --param window --values 1,4,16"
        )
    specs = {
        f.name: (cls, f) for cls in (RefineConfig, EngineConfig) for f in fields(cls) if "help" in f.metadata
    }
    params = []
    for raw, text in zip(names, values, strict=True):
        name = raw.replace("-", "_")
        if name not in specs:
            raise ValueError(
                f"--param {raw}: not a refiner field; one of {', '.join(REFINE_PARAMS + ENGINE_PARAMS)}"
            )
        cls, f = specs[name]
        kind, optional, item = _kind(typing.get_type_hints(cls)[name])
        parse = _value_type(kind, optional, f.metadata.get("range"), item)
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise ValueError(f"--values {text!r} (for --param {raw}): no values; e.g. --values 1,4,16")
        try:
            parsed = tuple(_parse_bool(x) if kind is bool else parse(x) for x in items)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--values {text} (for --param {raw}): {e}") from None
        choices = f.metadata.get("choices")
        bad = [v for v in parsed if choices is not None and v not in choices]
        if bad:
            raise ValueError(
                f"--values {text} (for --param {raw}): {bad[0]!r} is not one of {', '.join(choices)}"
            )
        if name in (p for p, _ in params):
            raise ValueError(f"--param {raw}: given twice; list all its values in one --values")
        params.append((name, parsed))
    return params


def _parse_bool(text: str) -> bool:
    value = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def cmd_sweep(a: argparse.Namespace) -> int:
    from sam2vss.sweep import run_sweep, settings

    params = sweep_params(a.param, a.values)
    swept = [name for name, _ in params]  # in --param order, as the table's columns
    base, model_cfg, run = refine_configs(a)
    items = settings(base, model_cfg, params)
    if model_cfg is not None:
        _device(a.device)
        _check_backend(a)
    metric = config_from(MetricConfig, a, num_classes=base.num_classes)
    with _semantic_pred(a, base.num_classes) as labels:
        jobs, protect = _refine_inputs(a, labels)
        report = run_sweep(
            jobs,
            open_dataset(a.data),
            a.split,
            a.out,
            items,
            metric,
            labels,
            run,
            protect,
            device=a.device,
            progress=not a.quiet,
            title=_sweep_title(a, base, model_cfg, swept),
            save_masklets=a.save_masklets,
        )
    print((a.out / "sweep.md").read_text().rstrip())
    if report.written:
        print(f"wrote {', '.join(str(a.out / n) for n in report.written)}")
    else:
        print(f"nothing to do: all {len(items)} settings are done and {a.out}'s summary is current")
    for name, why in report.failed.items():
        _error("sweep", f"setting {name}: {why}")
    return 1 if report.failed else 0


def _sweep_title(a, base: RefineConfig, model_cfg: ModelConfig | None, swept: list[str]) -> str:
    """What the table is: the swept fields, the fixed settings that matter, the data."""
    parts = [f"masks {base.masks}"]
    if base.masks != "superpixel":  # superpixels run the same code in both pipelines
        parts.append(
            f"pipeline {base.pipeline}" + (f", preset {base.preset}" if base.pipeline == "fast" else "")
        )
    if model_cfg is not None:
        weights = "random weights" if model_cfg.random_weights else Path(model_cfg.checkpoint).name
        parts.append(f"{model_cfg.name} at {model_cfg.image_size} ({weights})")
    fixed = [p for p in parts if p.split()[0] not in swept]
    return f"sweep of {', '.join(swept)} on {a.data} ({a.split}): {', '.join(fixed)}"


def _model_cfg_if_needed(a: argparse.Namespace, needed: bool) -> ModelConfig | None:
    if not needed:
        return None
    if a.checkpoint is None:
        raise ValueError(
            "SAM2 features or masklets need --checkpoint PATH, or --checkpoint none for random weights"
        )
    return config_from(ModelConfig, a)


def cmd_train_classifier(a: argparse.Namespace) -> int:
    from sam2vss.segmentor import SegmentorConfig, train

    cfg = config_from(SegmentorConfig, a)
    model_cfg = _model_cfg_if_needed(a, "sam2" in (cfg.features, cfg.masklets))
    ckpt = train(open_dataset(a.data), a.split, cfg, a.out, model_cfg, progress=not a.quiet)
    print(
        f"trained on {ckpt['samples']} masklets: loss {ckpt['losses'][0]:.4f} -> {ckpt['losses'][-1]:.4f};"
        f" wrote {a.out}"
    )
    return 0


def cmd_segment(a: argparse.Namespace) -> int:
    from sam2vss.segmentor import segment

    n = segment(open_dataset(a.data), a.split, a.classifier, a.out, a.base, progress=not a.quiet)
    print(f"segmented {n} frames -> {a.out}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sam2vss.bench import (
        bench_clip,
        detect_sweep,
        format_detect_rows,
        format_rows,
        plot,
        run_bench,
    )
    from sam2vss.hardware import environment
    from sam2vss.model import resolve_device
    from sam2vss.sinks import write_json

    cfg = config_from(BenchConfig, a)
    runs, windows, grids = cfg.runs(), list(cfg.windows), list(cfg.grids)
    bad = [f"{p}@{b}" for p, b in runs if p not in PRESETS or b not in MODEL_BACKENDS]
    if bad or not runs or not (windows or grids) or min(windows + grids, default=1) < 1:
        raise ValueError(
            f"--preset {','.join(cfg.presets)!r} / --backend {','.join(cfg.backends)!r} / --window"
            f" {','.join(map(str, windows))!r} / --grid {','.join(map(str, grids))!r}: presets among"
            f" {', '.join(PRESETS)}, backends among {', '.join(MODEL_BACKENDS)}, windows and grids"
            " positive integers, e.g. --preset exact,fastest,exact@inductor --window 8,32 --grid 16,32"
        )
    job = bench_clip(a.data_dir, cfg.frames, cfg.masklets, cfg.height, cfg.width, progress=not a.quiet)
    model_cfg = config_from(ModelConfig, a)
    rows, ceiling = [], 0.0
    if windows:
        rows, ceiling = run_bench(
            job, model_cfg, windows, cfg.compare_reference, runs, not a.quiet, cfg.masks, cfg.emulate_cuda
        )
    detect_rows = detect_sweep(job, grids, model_cfg, runs, cfg.compare_reference, progress=not a.quiet)
    clip = f"{cfg.frames} frames at {cfg.height}x{cfg.width}, {cfg.masklets} objects"
    # Emulated CUDA: the timings are the CPU's, so the CPU names them.
    env = environment("cpu" if cfg.emulate_cuda else resolve_device(model_cfg.device))
    title = f"{clip}, {a.model} image size {a.image_size}, {env}"
    print(title)
    if rows:
        print(format_rows(rows, ceiling))
    if detect_rows:
        print(format_detect_rows(detect_rows))
    if a.json:
        meta = {"environment": env, "clip": clip, "model": a.model, "image_size": a.image_size}
        meta |= {"masks": cfg.masks, "emulated_cuda": cfg.emulate_cuda}
        result = {"matmul_ceiling_flops": ceiling, "rows": [asdict(r) for r in rows]}
        write_json(a.json, meta | result | {"detect_rows": [asdict(r) for r in detect_rows]})
        print(f"wrote {a.json}")
    if a.plot and rows:
        plot(rows, a.plot, title)
        print(f"wrote {a.plot}")
    return 0


def cmd_viz(a: argparse.Namespace) -> int:
    from sam2vss.viz import describe, visualize

    methods = eval_methods(a.pred)
    dataset = open_dataset(a.data, a.layout)
    written = visualize(dataset, methods, a.out, a.split, a.video, a.frames, progress=not a.quiet)
    print(f"wrote {describe(written, a.frames)} -> {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from sam2vss.demo import run_demo

    model_cfg = None
    if a.checkpoint is not None:
        size = {} if a.image_size is None else {"image_size": a.image_size}
        model_cfg = ModelConfig(name=a.model, checkpoint=a.checkpoint, **size)
    elif a.image_size is not None:
        raise ValueError("--image-size: only with --checkpoint (the superpixel demo runs no model)")
    run_demo(a.out, videos=a.videos, frames=a.frames, model_cfg=model_cfg, progress=not a.quiet)
    return 0


def _error(command: str, message: str) -> None:
    print(f"sam2vss {command}: error: {' '.join(str(message).splitlines())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {
        "synth": cmd_synth,
        "eval": cmd_eval,
        "refine": cmd_refine,
        "sweep": cmd_sweep,
        "train-classifier": cmd_train_classifier,
        "segment": cmd_segment,
        "bench": cmd_bench,
        "viz": cmd_viz,
        "demo": cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt as e:
        error, code = e, 130
        message = (
            "interrupted (Ctrl-C): finished videos are kept, the one in progress left no output;"
            " rerun the same command to resume"
        )
    except (DataError, ValueError) as e:  # ModelError and outdir.OutputError too: refused before work
        error, code, message = e, 2, str(e)
    except OSError as e:
        error, code = e, 1
        where = f"{e.filename}: " if e.filename else ""
        message = f"{where}{e.strerror or e}; check the path, its permissions and free space"
    except Exception as e:  # a bug: one line here, the traceback with --debug
        error, code = e, 1
        message = f"internal error ({type(e).__name__}: {e}); rerun with --debug and report it"
    if args.debug or envs.SAM2VSS_DEBUG:
        traceback.print_exception(error)
    _error(args.command, message)
    return code


if __name__ == "__main__":
    sys.exit(main())
