"""`sam2vss` command line: synth, eval, refine, I-SAM2, bench, demo. Flags map 1:1 to config
dataclass fields.

The boundary: arguments and inputs are checked before any work, and every error ends in one
line on stderr, `sam2vss CMD: error: <file or flag>: <what> <fix>`, with no traceback unless
--debug or SAM2VSS_DEBUG=1. Exit codes: 0 done, 1 some videos failed (or an internal error),
2 bad arguments or inputs refused before work, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

from sam2vss import __version__, envs, versions
from sam2vss.config import (
    DECODERS,
    MODEL_BACKENDS,
    PRESETS,
    THRESHOLD_RANGES,
    MetricConfig,
    RefineConfig,
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

exit codes: 0 done, 1 some videos failed (the others are kept), 2 bad arguments or inputs refused
before any work, 130 interrupted (Ctrl-C). Errors are one line, `sam2vss CMD: error: ...`;
--debug (or SAM2VSS_DEBUG=1) also prints the traceback.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error format (`--flag: what`, not `argument --flag: what`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message.removeprefix('argument ')}\n")


def _in_range(name: str):
    """An argparse type for a threshold of RefineConfig, range-checked (config.THRESHOLD_RANGES)."""
    lo, hi = THRESHOLD_RANGES[name]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo:g}, {hi:g}], got {text}")
        return value

    return parse


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


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


def _add_metric_flags(p: argparse.ArgumentParser) -> None:
    d = MetricConfig()
    g = p.add_argument_group("metric semantics (METRICS.md section 8; defaults = CFFM/TV3S reference)")
    g.add_argument(
        "--num-classes", type=int, default=d.num_classes, help="evaluated classes (default %(default)s)"
    )
    g.add_argument(
        "--boundary-kernel",
        type=int,
        default=d.boundary_kernel,
        help="mBIoU square erosion kernel side, odd (default %(default)s)",
    )
    g.add_argument("--pad-border", action="store_true", help="mBIoU: the image border counts as a boundary")
    g.add_argument(
        "--void-mode",
        choices=("drop", "keep"),
        default=d.void_mode,
        help="mBIoU: drop predicted band pixels on GT void (default %(default)s)",
    )
    g.add_argument(
        "--vc-skip-rule",
        choices=("16", "n"),
        default=d.vc_skip_rule,
        help="skip videos with <= 16 frames for every n (CFFM/TV3S) or <= n (default %(default)s)",
    )
    g.add_argument(
        "--vc-gt",
        choices=("reduced", "raw"),
        default=d.vc_gt,
        help="GT used by mVC: reduced (CFFM/TV3S) or raw VSPW ids (default %(default)s)",
    )
    g.add_argument(
        "--vc-last-window",
        action="store_true",
        help="mVC: L-n+1 windows per video instead of the reference scripts' L-n",
    )
    g.add_argument(
        "--vc-aggregate",
        choices=("pooled", "per_video"),
        default=d.vc_aggregate,
        help="mVC: nanmean over all windows, or mean of per-video means (default %(default)s)",
    )


def _add_segmentor_flags(p: argparse.ArgumentParser) -> None:
    from sam2vss.segmentor import SegmentorConfig

    d = SegmentorConfig()
    g = p.add_argument_group("I-SAM2 classifier")
    g.add_argument(
        "--features",
        default=d.features,
        help="encoder: builtin, sam2, or MODULE:CALLABLE returning a (B,3,H,W)->(B,C,h,w) module"
        " (default %(default)s)",
    )
    g.add_argument(
        "--masklets",
        choices=("superpixel", "instances", "sam2"),
        default=d.masklets,
        help="masklet source (default %(default)s)",
    )
    for name in ("depth", "width", "epochs", "batch_size", "frame_stride", "seed", "window"):
        g.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(d, name), help="default %(default)s"
        )
    for name in ("dropout", "lr", "weight_decay", "purity"):
        g.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(d, name), help="default %(default)s"
        )
    g.add_argument("--class-balance", action="store_true", help="weight the loss by 1/sqrt(class frequency)")
    g.add_argument("--num-classes", type=int, default=d.num_classes, help="default %(default)s")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    d = ModelConfig()
    g = p.add_argument_group("SAM2 model")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="SAM2 checkpoint .pt, or 'none' for random weights (plumbing and speed only)",
    )
    g.add_argument(
        "--model",
        default=d.name,
        help="sam2.1_hiera_t|s|b+|l (or t, s, b+, l), sam2_hiera_* for SAM2 (default %(default)s)",
    )
    g.add_argument(
        "--image-size", type=int, default=d.image_size, help="SAM2 input size (default %(default)s)"
    )
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")


def _metric_config(a: argparse.Namespace) -> MetricConfig:
    return MetricConfig(
        num_classes=a.num_classes,
        boundary_kernel=a.boundary_kernel,
        pad_border=a.pad_border,
        void_mode=a.void_mode,
        vc_skip_rule=a.vc_skip_rule,
        vc_gt=a.vc_gt,
        vc_last_window=a.vc_last_window,
        vc_aggregate=a.vc_aggregate,
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sam2vss",
        description="SAM2 refinement, I-SAM2 segmentation and exact evaluation for video semantic"
        " segmentation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument(
        "--debug", action="store_true", help="print the traceback above an error (or SAM2VSS_DEBUG=1)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = SynthConfig()
    s = sub.add_parser(
        "synth",
        parents=[common],
        help="write a deterministic synthetic dataset in VSPW layout",
        description="Synthetic VSS data: frames, raw VSPW masks, instance ids and a simulated base model's"
        " predictions (DIR/pred_base). Same arguments, same bytes.",
    )
    s.add_argument("--out", type=Path, required=True, help="output dataset root")
    s.add_argument("--videos", type=int, default=d.videos, help="val videos (default %(default)s)")
    s.add_argument(
        "--train-videos", type=int, default=d.train_videos, help="train videos (default %(default)s)"
    )
    s.add_argument("--frames", type=int, default=d.frames, help="frames per video (default %(default)s)")
    s.add_argument("--height", type=int, default=d.height, help="frame height (default %(default)s)")
    s.add_argument("--width", type=int, default=d.width, help="frame width (default %(default)s)")
    s.add_argument("--classes", type=int, default=d.classes, help="classes in use (default %(default)s)")
    s.add_argument(
        "--objects", type=int, default=d.objects, help="moving objects per video (default %(default)s)"
    )
    s.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")

    e = sub.add_parser(
        "eval",
        parents=[common],
        help="mIoU, WIoU, mBIoU, mVC8, mVC16 of a prediction folder",
        description="Evaluate predictions DIR/<video>/<frame>.png (class ids 0..C-1, palette or grayscale)"
        " against a VSPW or VIPSeg root, exactly as the field's reference scripts compute the metrics"
        " (METRICS.md section 8).",
    )
    e.add_argument("--data", type=Path, required=True, help="dataset root (VSPW or VIPSeg layout)")
    e.add_argument("--pred", type=Path, required=True, help="prediction folder, one subfolder per video")
    e.add_argument("--split", default="val", help="split file name without .txt (default %(default)s)")
    e.add_argument("--layout", choices=("auto", "vspw", "vipseg"), default="auto", help="dataset layout")
    e.add_argument("--json", type=Path, help="write the metrics JSON here")
    e.add_argument("--per-video", action="store_true", help="also print a per-video breakdown")
    e.add_argument("--workers", type=_at_least(1), default=None, help="decode threads (default: all cores)")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument(
        "--reference",
        action="store_true",
        help="use the slow per-frame numpy twin written like the reference scripts",
    )
    _add_metric_flags(e)

    r = sub.add_parser(
        "refine",
        parents=[common],
        help="refine base predictions with SAM2 (or superpixel) masklets",
        description="The paper's refiner: masklets from SAM2's mask generator propagated through"
        " non-overlapping windows; each masklet takes the majority base class. Outputs"
        " OUT/<video>/<frame>.png; OUT/manifest.json makes reruns resume.",
    )
    src = r.add_argument_group("input (a dataset root, or one video file with its label folder)")
    src.add_argument("--data", type=Path, help="dataset root in VSPW layout (frames in data/<video>/origin)")
    src.add_argument("--pred", type=Path, help="base predictions, DIR/<video>/<frame>.png")
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
    run = r.add_argument_group("scale-out")
    run.add_argument(
        "--runner",
        choices=("local", "ray"),
        default="local",
        help="local: one process; ray: Ray Data actors, one video per task (default %(default)s)",
    )
    run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument(
        "--workers",
        type=_at_least(1),
        default=None,
        help="Ray actors (default: one per GPU; one per CPU for superpixels or CPU-only clusters)",
    )
    run.add_argument(
        "--retries",
        type=_at_least(0),
        default=1,
        help="retries of a video that raises (default %(default)s; bad input data is not retried)",
    )
    d = RefineConfig()
    g = r.add_argument_group("refiner (defaults: the paper's settings)")
    g.add_argument(
        "--masks",
        choices=("sam2", "instances", "superpixel"),
        default=d.masks,
        help="masklet source (default %(default)s; instances: the dataset's instance masks)",
    )
    g.add_argument(
        "--pipeline",
        choices=("reference", "fast"),
        default="fast",
        help="fast (default): batched tracking and fused kernels, the reference's labels on >= 99.9%% of"
        " pixels with --preset exact; reference: the official SAM2 classes, the paper's way",
    )
    g.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=d.preset,
        help="the fast pipeline's speed preset (default %(default)s: the reference's labels; faster ones"
        " trade tracking size, memory frames and masklets for speed, see the README)",
    )
    g.add_argument(
        "--backend",
        choices=MODEL_BACKENDS,
        default=d.backend,
        help="the fast pipeline's model backend (default %(default)s; inductor: torch.compile; tensorrt:"
        " CUDA + torch-tensorrt, engines cached in SAM2VSS_CACHE)",
    )
    g.add_argument(
        "--window", type=_at_least(1), default=d.window, help="frames per window (default %(default)s)"
    )
    g.add_argument(
        "--grid", type=_at_least(1), default=d.grid, help="AMG points per side (default %(default)s)"
    )
    for name, what in (
        ("pred_iou_thresh", "in [0, 1]"),
        ("stability_thresh", "in [0, 1]"),
        ("stability_offset", "a logit margin >= 0"),
        ("box_nms_thresh", "in [0, 1]"),
    ):
        g.add_argument(
            f"--{name.replace('_', '-')}",
            type=_in_range(name),
            default=getattr(d, name),
            help=f"{what} (default %(default)s)",
        )
    g.add_argument(
        "--vote-scope",
        choices=("masklet", "frame"),
        default=None,
        help="one class per masklet per window, or per frame (default: masklet; frame for superpixels)",
    )
    g.add_argument(
        "--paint-order",
        choices=("area", "logit", "amg"),
        default=d.paint_order,
        help="overlaps: area descending (smaller wins), highest logit, or AMG order (default %(default)s)",
    )
    g.add_argument("--superpixel-method", choices=("slic", "felzenszwalb"), default=d.superpixel_method)
    g.add_argument(
        "--superpixel-size",
        type=int,
        default=d.superpixel_size,
        help="SLIC mean superpixel area in pixels (default %(default)s)",
    )
    g.add_argument("--num-classes", type=int, default=d.num_classes, help="default %(default)s")
    _add_model_flags(r)

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
    _add_segmentor_flags(t)
    _add_model_flags(t)

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
    b.add_argument("--frames", type=int, default=64, help="clip length (default %(default)s)")
    b.add_argument("--masklets", type=int, default=25, help="objects in the clip (default %(default)s)")
    b.add_argument(
        "--window",
        default="32",
        help="comma-separated window sizes (default %(default)s; empty with --grid: detection only)",
    )
    b.add_argument(
        "--grid",
        default="",
        help="comma-separated AMG grid sizes, e.g. 8,16,32,64: adds a keyframe-detection table (each preset's"
        " detector, and the official generator with --compare-reference, on the clip's first frame; with"
        " random weights the thresholds are lowered so that masks are kept)",
    )
    b.add_argument("--height", type=int, default=480, help="default %(default)s")
    b.add_argument("--width", type=int, default=854, help="default %(default)s")
    b.add_argument(
        "--preset",
        default="exact",
        help=f"comma-separated fast-pipeline presets ({', '.join(PRESETS)}), each run with every --backend;"
        " PRESET@BACKEND runs one pair only (default %(default)s)",
    )
    b.add_argument(
        "--backend",
        default="eager",
        help=f"comma-separated model backends ({', '.join(MODEL_BACKENDS)}; default %(default)s)",
    )
    b.add_argument(
        "--compare-reference",
        action="store_true",
        help="also run the reference refiner in the same run; rows then carry their label agreement",
    )
    b.add_argument(
        "--masks",
        choices=("instances", "sam2"),
        default="instances",
        help="masklets prompted from the clip's instance masks (default), or found by SAM2's generator"
        " (grid 16, thresholds lowered for random weights)",
    )
    b.add_argument(
        "--emulate-cuda",
        action="store_true",
        help="run on the emulated CUDA device (CPU compute) and add its counts to each row: launches and"
        " syncs per frame, syncs per window, bytes copied each way, device mismatches",
    )
    b.add_argument("--plot", type=Path, default=None, help="write the ms/frame-per-window plot here (PNG)")
    b.add_argument("--json", type=Path, default=None, help="write the rows here")
    b.add_argument("--data-dir", type=Path, default=Path("bench_data"), help="where the clip is generated")
    b.add_argument("--checkpoint", default="none", help="SAM2 checkpoint, or none (default %(default)s)")
    b.add_argument("--model", default="sam2.1_hiera_t", help="default %(default)s")
    b.add_argument("--image-size", type=int, default=256, help="default %(default)s")

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
    return p


def cmd_synth(a: argparse.Namespace) -> int:
    from sam2vss.synth import synthesize

    cfg = SynthConfig(
        videos=a.videos,
        frames=a.frames,
        height=a.height,
        width=a.width,
        classes=a.classes,
        objects=a.objects,
        seed=a.seed,
        train_videos=a.train_videos,
    )
    t0 = time.perf_counter()
    synthesize(a.out, cfg, progress=not a.quiet)
    print(
        f"wrote {a.out} ({cfg.videos} val + {cfg.train_videos} train videos x {cfg.frames} frames,"
        f" {time.perf_counter() - t0:.1f} s); base predictions in {a.out / 'pred_base'}"
    )
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from sam2vss.data import open_dataset
    from sam2vss.evaluate import describe_counts, evaluate, format_table
    from sam2vss.metrics import summarize
    from sam2vss.outdir import check_writable
    from sam2vss.sinks import write_json

    cfg = _metric_config(a)
    device = _device(a.device) if a.device is not None else None
    if a.json:
        check_writable(a.json, "--json", is_file=True)  # before the work, not after it
    dataset = open_dataset(a.data, a.layout)
    t0 = time.perf_counter()
    if a.reference:
        from sam2vss.metrics_reference import evaluate_reference

        metrics, videos = evaluate_reference(dataset, a.pred, a.split, cfg, progress=not a.quiet), []
    else:
        result = evaluate(dataset, a.pred, a.split, cfg, device, a.workers, progress=not a.quiet)
        metrics, videos = result.metrics, result.videos
    dt = time.perf_counter() - t0
    print(format_table([(str(a.pred), metrics)]))
    print(describe_counts(metrics) + f"; {metrics['frames'] / dt:.1f} frames/s")
    if a.per_video and videos:
        print()
        print(format_table([(v.name, summarize([v], cfg)) for v in videos], title="per video"))
    if a.json:
        write_json(a.json, {**metrics, "config": cfg.__dict__ | {"vc_lengths": list(cfg.vc_lengths)}})
        print(f"wrote {a.json}")
    return 0


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


def _refine_inputs(a: argparse.Namespace):
    """(jobs, the input folders --out must keep clear of, named by their flags)."""
    from sam2vss.outdir import Input
    from sam2vss.refine import dataset_jobs, video_job

    if (a.data is None) == (a.video is None):
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
        return dataset_jobs(dataset, a.pred, a.split, a.decoder), protect
    if a.labels is None:
        raise ValueError("--labels: --video needs --labels DIR (the video's base predictions)")
    protect = [
        Input("the --labels folder", a.labels),
        Input("the folder of --video", a.video.parent, tree=False),
    ]
    return [video_job(a.video, a.labels, a.decoder)], protect


def cmd_refine(a: argparse.Namespace) -> int:
    from sam2vss.refine import refine_jobs

    cfg = RefineConfig(
        masks=a.masks,
        window=a.window,
        grid=a.grid,
        pred_iou_thresh=a.pred_iou_thresh,
        stability_thresh=a.stability_thresh,
        stability_offset=a.stability_offset,
        box_nms_thresh=a.box_nms_thresh,
        vote_scope=a.vote_scope or ("frame" if a.masks == "superpixel" else "masklet"),
        paint_order=a.paint_order,
        num_classes=a.num_classes,
        superpixel_method=a.superpixel_method,
        superpixel_size=a.superpixel_size,
        preset=a.preset,
        backend=a.backend,
    )
    model_cfg = None
    if a.masks != "superpixel":
        if a.checkpoint is None:
            raise ValueError(
                f"--checkpoint: --masks {a.masks} needs --checkpoint PATH (a SAM2 .pt), or --checkpoint"
                " none for random weights (plumbing and speed only); --masks superpixel needs no model"
            )
        model_cfg = ModelConfig(
            name=a.model, checkpoint=a.checkpoint, image_size=a.image_size, device=a.device
        )
        _device(a.device)
        _check_backend(a)
    jobs, protect = _refine_inputs(a)
    report = refine_jobs(
        jobs,
        a.out,
        cfg,
        model_cfg,
        overwrite=a.overwrite,
        progress=not a.quiet,
        runner=a.runner,
        retries=a.retries,
        workers=a.workers,
        ray_address=a.ray_address,
        pipeline=a.pipeline,
        protect=protect,
    )
    fps = report.frames / max(report.seconds, 1e-9)
    again = len(set(report.redone) & set(report.done))
    again = f" ({again} of them again, see above)" if again else ""
    print(
        f"refined {len(report.done)} videos{again} ({report.frames} frames, {fps:.2f} frames/s), skipped"
        f" {len(report.skipped)} already done, {len(report.failed)} failed -> {a.out}"
    )
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


def _model_cfg_if_needed(a: argparse.Namespace, needed: bool) -> ModelConfig | None:
    if not needed:
        return None
    if a.checkpoint is None:
        raise ValueError(
            "SAM2 features or masklets need --checkpoint PATH, or --checkpoint none for random weights"
        )
    return ModelConfig(name=a.model, checkpoint=a.checkpoint, image_size=a.image_size, device=a.device)


def cmd_train_classifier(a: argparse.Namespace) -> int:
    from sam2vss.segmentor import SegmentorConfig, train

    names = (
        "features",
        "masklets",
        "depth",
        "width",
        "epochs",
        "batch_size",
        "frame_stride",
        "seed",
        "window",
        "dropout",
        "lr",
        "weight_decay",
        "purity",
        "class_balance",
        "num_classes",
    )
    cfg = SegmentorConfig(**{n: getattr(a, n) for n in names}, image_size=a.image_size)
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

    windows = [int(w) for w in a.window.split(",") if w]
    grids = [int(g) for g in a.grid.split(",") if g]
    backends = [b for b in a.backend.split(",") if b]
    runs = []  # (preset, backend): each plain preset with each --backend; "preset@backend" alone
    for item in (p for p in a.preset.split(",") if p):
        preset, _, backend = item.partition("@")
        runs += [(preset, backend)] if backend else [(preset, b) for b in backends]
    bad = [f"{p}@{b}" for p, b in runs if p not in PRESETS or b not in MODEL_BACKENDS]
    if bad or not runs or not (windows or grids) or min(windows + grids, default=1) < 1:
        raise ValueError(
            f"--preset {a.preset!r} / --backend {a.backend!r} / --window {a.window!r} / --grid {a.grid!r}:"
            f" presets among {', '.join(PRESETS)}, backends among {', '.join(MODEL_BACKENDS)}, windows and"
            " grids positive integers, e.g. --preset exact,fastest,exact@inductor --window 8,32 --grid 16,32"
        )
    job = bench_clip(a.data_dir, a.frames, a.masklets, a.height, a.width, progress=not a.quiet)
    model_cfg = ModelConfig(name=a.model, checkpoint=a.checkpoint, image_size=a.image_size)
    rows, ceiling = [], 0.0
    if windows:
        rows, ceiling = run_bench(
            job, model_cfg, windows, a.compare_reference, tuple(runs), not a.quiet, a.masks, a.emulate_cuda
        )
    detect_rows = detect_sweep(job, grids, model_cfg, tuple(runs), a.compare_reference, progress=not a.quiet)
    clip = f"{a.frames} frames at {a.height}x{a.width}, {a.masklets} objects"
    # Emulated CUDA: the timings are the CPU's, so the CPU names them.
    env = environment("cpu" if a.emulate_cuda else resolve_device(model_cfg.device))
    title = f"{clip}, {a.model} image size {a.image_size}, {env}"
    print(title)
    if rows:
        print(format_rows(rows, ceiling))
    if detect_rows:
        print(format_detect_rows(detect_rows))
    if a.json:
        meta = {"environment": env, "clip": clip, "model": a.model, "image_size": a.image_size}
        meta |= {"masks": a.masks, "emulated_cuda": a.emulate_cuda}
        result = {"matmul_ceiling_flops": ceiling, "rows": [asdict(r) for r in rows]}
        write_json(a.json, meta | result | {"detect_rows": [asdict(r) for r in detect_rows]})
        print(f"wrote {a.json}")
    if a.plot and rows:
        plot(rows, a.plot, title)
        print(f"wrote {a.plot}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from sam2vss.demo import run_demo

    model_cfg = None if a.checkpoint is None else ModelConfig(name=a.model, checkpoint=a.checkpoint)
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
        "train-classifier": cmd_train_classifier,
        "segment": cmd_segment,
        "bench": cmd_bench,
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
