"""`sam2vss sweep`: the paper's ablation tables (Tables 4-7) in one command.

Each setting (one value of each swept parameter; several parameters give their grid) is the
base RefineConfig with those values, refined into OUT/<param>=<value>[,<param>=<value>...]/ (an
ordinary `refine` output folder: manifest, lock, resume; `eval --pred` reads it) and evaluated
into its eval.json. Then OUT/sweep.md (the paper's table: setting, mIoU, FWIoU, mBIoU, mVC8,
mVC16, masklets per window, seconds), sweep.csv, sweep.json and sweep.png (metrics against the
setting).

The decision to know: a setting is done when `refine.finished` says so (every video done, its
outputs intact, its inputs unchanged) and its eval.json was computed from exactly those outputs
(the folder's configuration hash and output digests), with the same metric settings, against the
same GT bytes. Both checks only read, so rerunning a finished sweep builds no model and writes
nothing. Shared work, where no output depends on it: the settings refined in one run with the
same model, pipeline, engine and backend use one SAM2 build (engine.ModelCache), and the
settings evaluated in one pass decode each GT frame once; sweep.md lists both. Each row's
refinement is its own (its seconds too).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from sam2vss import outdir, refine
from sam2vss.config import PRESETS, EngineConfig, MetricConfig, RefineConfig, RunConfig
from sam2vss.data import Dataset
from sam2vss.engine import ModelCache, Pipeline, model_key
from sam2vss.evaluate import evaluate_methods
from sam2vss.model import ModelConfig
from sam2vss.sinks import atomic_write, write_json
from sam2vss.video import VideoJob

EVAL_FILE = "eval.json"  # OUT/<setting>/eval.json
BASE_EVAL = "base_eval.json"  # OUT/base_eval.json: the base predictions' metrics, the table's first row
SUMMARY = ("sweep.md", "sweep.csv", "sweep.json", "sweep.png", BASE_EVAL)
# The paper's ablation columns (Tables 4-7), as (header, metrics key).
COLUMNS = (("mIoU", "miou"), ("FWIoU", "fwiou"), ("mBIoU", "mbiou"), ("mVC8", "mvc8"), ("mVC16", "mvc16"))
REFINE_PARAMS = tuple(f.name for f in fields(RefineConfig) if "help" in f.metadata)
ENGINE_PARAMS = tuple(f.name for f in fields(EngineConfig) if "help" in f.metadata)


def show(value: object) -> str:
    """A value as the setting's folder name writes it (`window=4`, `pred_iou_thresh=0.6`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One row of the sweep: the swept (param, value) pairs and the configs they give."""

    values: tuple[tuple[str, object], ...]  # in --param order
    cfg: RefineConfig
    model: ModelConfig | None  # None: superpixel masklets

    @property
    def name(self) -> str:
        return setting_name(self.values)


def setting_name(values: Sequence[tuple[str, object]]) -> str:
    """The setting's folder name: `window=4`, `superpixel_size=64,paint_order=amg`."""
    return ",".join(f"{p}={show(v)}" for p, v in values)


def settings(
    base: RefineConfig, model: ModelConfig | None, params: Sequence[tuple[str, Sequence[object]]]
) -> list[Setting]:
    """The grid of `params` ((field name, values) of RefineConfig or EngineConfig fields) over
    `base`; each config is validated here, before any work."""
    out = []
    for combo in itertools.product(*(values for _, values in params)):
        values = tuple((name, v) for (name, _), v in zip(params, combo, strict=True))
        given = dict(values)
        cfg_fields = {k: v for k, v in given.items() if k in REFINE_PARAMS}
        engine_fields = {k: v for k, v in given.items() if k in ENGINE_PARAMS}
        name = setting_name(values)
        try:
            cfg = replace(base, **cfg_fields, engine=None)
            overrides = base.engine_overrides() | engine_fields
            if overrides:  # the engine fields over the (maybe swept) preset's
                cfg = replace(cfg, engine=replace(PRESETS[cfg.preset], **overrides))
        except (TypeError, ValueError) as e:
            raise ValueError(f"--param setting {name}: {e}") from None
        needs_model = cfg.masks != "superpixel"
        if needs_model and model is None:
            raise ValueError(
                f"--param setting {name}: --masks {cfg.masks} needs --checkpoint PATH (or none for"
                " random weights)"
            )
        out.append(Setting(values, cfg, model if needs_model else None))
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise ValueError(f"--values: settings repeat ({', '.join(names)}); give each value once")
    return out


@dataclass
class SweepReport:
    rows: list[dict]  # one per setting, in order (sweep.json's rows)
    refined: list[str] = field(default_factory=list)  # settings refine_jobs ran for
    evaluated: list[str] = field(default_factory=list)  # settings evaluated in this run
    failed: dict[str, str] = field(default_factory=dict)  # setting -> why
    written: list[str] = field(default_factory=list)  # summary files (re)written
    models_built: int = 0  # SAM2 builds in this run (the settings sharing one count once)


def gt_digest(dataset: Dataset, split: str) -> str:
    """sha256 over the split's GT files (names and bytes): an eval.json is valid for these only."""
    h = hashlib.sha256()
    for video in dataset.videos(split):
        for name in dataset.gt_frames(video):
            h.update(f"{video}/{name}\0".encode())
            h.update(hashlib.sha256((dataset.gt_dir(video) / name).read_bytes()).digest())
    return h.hexdigest()


def pred_digest(jobs: Sequence[VideoJob]) -> str:
    """sha256 over the base predictions the jobs read (names and bytes)."""
    h = hashlib.sha256()
    for job in jobs:
        for name in job.label_names:
            h.update(f"{job.name}/{name}\0".encode())
            h.update(hashlib.sha256((job.label_dir / name).read_bytes()).digest())
    return h.hexdigest()


def _expected_hash(s: Setting, runner: str) -> str:
    dtype = refine.model_dtype(s.cfg, s.model, runner)
    return refine.refine_config_hash(s.cfg, s.model, model_dtype=dtype)


def check_folder(out: Path, items: Sequence[Setting], runner: str) -> None:
    """Refuse, before any work, an --out that is not a sweep folder (entries other than setting
    folders and the summary files) and a setting folder that holds another configuration."""
    if not out.is_dir():
        return
    foreign = [n for n in outdir.foreign_entries(out) if "=" not in n and n not in SUMMARY]
    if foreign:
        raise outdir.OutputError(
            f"--out {out}: the folder holds {len(foreign)} entries that are not a sweep's (first:"
            f" {foreign[0]}); choose a new or empty --out"
        )
    for s in items:
        old = outdir.read_manifest(out / s.name)
        if old is not None and old["config_hash"] != _expected_hash(s, runner):
            here = refine.refine_settings(
                s.cfg, s.model, model_dtype=refine.model_dtype(s.cfg, s.model, runner)
            )
            folder = old.get("settings") or {}
            diff = "; ".join(outdir.settings_diff(folder, here)) or "another configuration hash"
            raise outdir.OutputError(
                f"--out {out}: {s.name}/ holds results of another configuration (folder -> this sweep:"
                f" {diff}); use a new --out, or the flags the folder was refined with"
            )


def _eval_key(folder: Path, metric: MetricConfig, gt: str, split: str) -> dict:
    """What an eval.json's metrics were computed from: the outputs, the metric settings, the GT."""
    manifest = outdir.read_manifest(folder) or {}
    videos = manifest.get("videos", {})
    return {
        "config_hash": manifest.get("config_hash"),
        "outputs": {name: e.get("sha256") for name, e in sorted(videos.items()) if e.get("status") == "done"},
        "metric": json.loads(json.dumps(asdict(metric))),
        "gt_sha256": gt,
        "split": split,
    }


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_sweep(
    jobs: list[VideoJob],
    dataset: Dataset,
    split: str,
    out: Path,
    items: Sequence[Setting],
    metric: MetricConfig,
    base_pred: Path,
    run: RunConfig = RunConfig(),
    protect: Sequence[outdir.Input] = (),
    device: str | None = None,
    progress: bool = True,
    title: str = "",
    save_masklets: bool = False,
) -> SweepReport:
    """Refine and evaluate each setting not already done, then write the summary files where
    they changed. A setting whose videos fail is reported and the others go on."""
    out = Path(out)
    outdir.guard_output(out, [*protect, *refine.job_inputs(jobs)])
    check_folder(out, items, run.runner)
    gt = gt_digest(dataset, split)
    report = SweepReport([])
    todo = [
        s for s in items if not refine.finished(jobs, out / s.name, s.cfg, s.model, run.runner, save_masklets)
    ]
    if todo:
        outdir.check_writable(out, "--out")
    models = ModelCache()  # one SAM2 per (pipeline, model, engine, backend) for all settings
    done_before = len(items) - len(todo)
    for k, s in enumerate(todo, 1):
        already = f"; {done_before} settings already done" if done_before else ""
        print(f"sweep {k}/{len(todo)}: {s.name} -> {out / s.name}{already}")
        refiner = Pipeline.build(s.cfg, s.model, models=models) if run.runner == "local" else None
        result = refine.refine_jobs(
            jobs, out / s.name, s.cfg, s.model, False, progress, run, protect, refiner, save_masklets
        )
        report.refined.append(s.name)
        if result.failed:
            name, error = next(iter(result.failed.items()))
            report.failed[s.name] = (
                f"{len(result.failed)} of {len(jobs)} videos failed (first: {name}: {error})"
            )
    report.models_built = models.builds
    ready = [s for s in items if s.name not in report.failed]
    keys = {s.name: _eval_key(out / s.name, metric, gt, split) for s in ready}
    stale = [s for s in ready if (_read_json(out / s.name / EVAL_FILE) or {}).get("key") != keys[s.name]]
    # The base row: only when every video's inputs are valid (a bad one fails in every setting)
    base_ok = ready and all(j.error is None for j in jobs)
    base_key = {}
    if base_ok:
        base_key = {
            "pred_sha256": pred_digest(jobs),
            "metric": keys[ready[0].name]["metric"],
            "gt_sha256": gt,
            "split": split,
        }
    base_stale = base_ok and (_read_json(out / BASE_EVAL) or {}).get("key") != base_key
    if stale or base_stale:
        folders = [out / s.name for s in stale] + ([base_pred] if base_stale else [])
        results = evaluate_methods(dataset, folders, split, metric, device, progress=progress)
        names = [s.name for s in stale] + (["base"] if base_stale else [])
        for name, folder, r in zip(names, folders, results, strict=True):
            entry = {"key": base_key if name == "base" else keys[name], "metrics": r.metrics}
            entry |= r.details(metric) | {"gt_decode_shared_with": [n for n in names if n != name]}
            write_json(out / BASE_EVAL if name == "base" else folder / EVAL_FILE, entry)
            report.evaluated.append(name)
    report.rows = [_row(out, s, report.failed.get(s.name)) for s in items]
    base = (_read_json(out / BASE_EVAL) or {}) if base_ok else {}
    base_row = {k: base[k] for k in ("metrics", "gt_decode_shared_with") if k in base}
    if not base_ok:  # said in the table, not left out silently
        bad = sum(j.error is not None for j in jobs)
        why = f"the base labels of {bad} videos are invalid" if bad else "no setting finished"
        base_row = {"error": f"not evaluated: {why}"}
    params = [p for p, _ in items[0].values] if items else []
    groups: dict[tuple, list[str]] = {}
    for s in items:
        key = model_key(s.cfg, s.model)
        if key is not None:
            groups.setdefault(key, []).append(s.name)
    shared = [names for names in groups.values() if len(names) > 1]
    report.written = write_summary(out, report.rows, params, title, base_row, shared)
    return report


def _row(out: Path, s: Setting, failed: str | None) -> dict:
    """A setting's table row: its values, metrics, masklets per window, frames and refine seconds."""
    row: dict = {"setting": s.name, "values": {p: v for p, v in s.values}, "masks": s.cfg.masks}
    if failed is not None:
        return row | {"status": "failed", "error": failed}
    videos = (outdir.read_manifest(out / s.name) or {}).get("videos", {})
    done = [e for e in videos.values() if e.get("status") == "done"]
    counts = [w[0] for e in done for w in e["masklets"]["per_window"]]
    evaluated = _read_json(out / s.name / EVAL_FILE) or {}
    return row | {
        "status": "done",
        "metrics": {key: evaluated["metrics"][key] for _, key in COLUMNS if key in evaluated["metrics"]},
        "masklets_per_window": round(sum(counts) / max(len(counts), 1), 2),
        "frames": sum(e["frames"] for e in done),
        "seconds": round(sum(e["seconds"] for e in done), 2),
        "gt_decode_shared_with": evaluated.get("gt_decode_shared_with", []),
    }


# ------------------------------------------------------------------ the summary files
def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}"


def format_markdown(
    rows: list[dict],
    params: list[str],
    title: str,
    base: dict | None = None,
    models: Sequence[list[str]] = (),
) -> str:
    """The paper's ablation layout: one row per setting (the base predictions first, where
    evaluated), metrics in percent, masklets per window, refine seconds; notes below."""
    head = [*params, *(h for h, _ in COLUMNS), "masklets/window", "seconds"]
    lines = [f"# {title}" if title else "# sweep", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    if base and "metrics" in base:
        cells = ["base (unrefined)"] + [""] * (len(params) - 1)
        cells += [_pct(base["metrics"].get(key)) for _, key in COLUMNS] + ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    elif base and "error" in base:
        cells = (
            ["base (unrefined)"]
            + [""] * (len(params) - 1)
            + [base["error"]]
            + [""] * (len(head) - len(params) - 1)
        )
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        cells = [show(r["values"][p]) for p in params]
        if r["status"] != "done":
            cells += ["failed"] + [""] * (len(head) - len(params) - 1)
        else:
            cells += [_pct(r["metrics"].get(key)) for _, key in COLUMNS]
            cells += [f"{r['masklets_per_window']:g}", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Metrics in percent (METRICS.md 8; n/a: undefined, e.g. mVC16 when every video has <= 16"
        " frames). Masklets per window: the mean over all windows of all videos (superpixels:"
        " segments per frame). Seconds: the setting's refine time, the model build and library"
        " imports excluded (the first row refined in a run still pays first-call warm-up). FWIoU is"
        " eval's WIoU, the frequency-weighted IoU.",
    ]
    lines += [
        "",
        "Shared work (no output depends on it; each row equals a refine + eval of its own): rows"
        " refined in one run with the same SAM2 model, pipeline, engine and backend use one model"
        " build; the rows (and the base) evaluated in one pass decode each GT frame once:",
    ]
    lines += [f"- model: {', '.join(names)}" for names in models]
    order = [r["setting"] for r in rows] + ["base"]
    passes = {  # as recorded when each row was evaluated, restricted to this table's rows
        frozenset(n for n in [r["setting"], *r["gt_decode_shared_with"]] if n in order)
        for r in rows
        if r.get("gt_decode_shared_with")
    }
    passes = {members for members in passes if len(members) > 1}
    for members in sorted(passes, key=lambda m: min(order.index(n) for n in m)):
        lines.append(f"- GT decode (one evaluation pass): {', '.join(n for n in order if n in members)}")
    lines += ["", "Not shared: each row's refinement (its seconds are its own)."]
    if any(r.get("masks") == "sam2" for r in rows):
        lines[-1] += " The keyframe's AMG candidates, for one, are computed again for each threshold value."
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", "Failed settings (fix the inputs named and rerun the same command):"]
        lines += [f"- {r['setting']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def format_csv(rows: list[dict], params: list[str], base: dict | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["setting", *params, "status", *(k for _, k in COLUMNS), "masklets_per_window", "frames", "seconds"]
    )

    def metrics(m: dict) -> list:
        return ["" if m.get(k) is None else m[k] for _, k in COLUMNS]

    if base and "metrics" in base:
        w.writerow(["base", *([""] * len(params)), "base", *metrics(base["metrics"]), "", "", ""])
    elif base and "error" in base:
        w.writerow(["base", *([""] * len(params)), base["error"], *metrics({}), "", "", ""])
    for r in rows:
        cells = [r["setting"], *(show(r["values"][p]) for p in params), r["status"]]
        cells += metrics(r.get("metrics", {}))
        w.writerow([*cells, r.get("masklets_per_window", ""), r.get("frames", ""), r.get("seconds", "")])
    return buf.getvalue()


def _write_text(path: Path, text: str) -> bool:
    """Write `text` atomically unless the file already holds it (a rerun leaves mtimes alone)."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)
    return True


def write_summary(
    out: Path,
    rows: list[dict],
    params: list[str],
    title: str,
    base: dict | None = None,
    models: Sequence[list[str]] = (),
) -> list[str]:
    """sweep.md, .csv, .json and .png, each only where its content changed; the names written."""
    doc = {"title": title, "params": params, "columns": [k for _, k in COLUMNS], "base": base or None}
    doc["model_shared_by"] = list(models)
    text = json.dumps(doc | {"rows": rows}, indent=2, default=str) + "\n"
    written = [name for name, body in (
        ("sweep.json", text),
        ("sweep.md", format_markdown(rows, params, title, base, models)),
        ("sweep.csv", format_csv(rows, params, base)),
    ) if _write_text(out / name, body)]  # fmt: skip
    if "sweep.json" in written or not (out / "sweep.png").exists():
        plot(rows, params, out / "sweep.png", title, base)
        written.append("sweep.png")
    return written


def _numeric(values: list) -> bool:
    return bool(values) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)


def _x_axis(a, xs: list, labels: list[str], name: str) -> None:
    """A numeric parameter on its own axis (log 2 where the values span 8x or more), otherwise
    one tick per label."""
    if _numeric(xs):
        if min(xs) > 0 and max(xs) >= 8 * min(xs):
            a.set_xscale("log", base=2)
        a.set_xticks(sorted(set(xs)), [show(x) for x in sorted(set(xs))])
    else:
        a.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    a.set_xlabel(name)
    a.grid(alpha=0.3)


def _percent(r: dict, key: str) -> float:
    v = r["metrics"].get(key)
    return math.nan if v is None else 100 * v


def plot(rows: list[dict], params: list[str], path: Path, title: str, base: dict | None = None) -> None:
    """sweep.png. One parameter: each defined metric (percent) against it, the base predictions'
    as dashed lines, and the refine seconds per frame beside it. Several: mIoU and mBIoU against
    the first parameter, one line per value of the others, and the seconds per frame likewise."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("sweep.png needs matplotlib: pip install 'sam2vss[bench]'") from e
    done = [r for r in rows if r["status"] == "done"]
    base_metrics = (base or {}).get("metrics") or {}
    first = [r["values"][params[0]] for r in done]
    ticks = list(dict.fromkeys(show(x) for x in first))  # categorical: in sweep order

    def x_of(r: dict):
        value = r["values"][params[0]]
        return value if _numeric(first) else ticks.index(show(value))

    groups: dict[str, list[dict]] = {}
    for r in done:  # one line per value of the other parameters ("" with one parameter)
        groups.setdefault(",".join(f"{p}={show(r['values'][p])}" for p in params[1:]), []).append(r)
    single = len(params) == 1
    metric_panels = [COLUMNS] if single else [(c,) for c in COLUMNS if c[1] in ("miou", "mbiou")]
    ratios = [2, 1] if single else [1, 1, 1]
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(10 if single else 13, 4), dpi=120, gridspec_kw={"width_ratios": ratios}
    )
    for ax, shown in zip(axes, metric_panels, strict=False):
        for header, key in shown:
            color = None
            for label, members in groups.items():
                ys = [_percent(r, key) for r in members]
                if all(y != y for y in ys):  # undefined everywhere (mVC of short videos): no line
                    continue
                (line,) = ax.plot(
                    [x_of(r) for r in members], ys, marker="o", label=header if single else label
                )
                color = line.get_color() if single else "gray"
            if color is not None and base_metrics.get(key) is not None:
                ax.axhline(100 * base_metrics[key], ls="--", lw=1, color=color)
        if base_metrics:
            ax.plot([], [], ls="--", color="gray", label="base (unrefined)")
        ax.set_ylabel("percent" if single else f"{shown[0][0]} (percent)")
        _x_axis(ax, first, ticks, params[0])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    side = axes[-1]
    for label, members in groups.items():
        seconds = [r["seconds"] / max(r["frames"], 1) for r in members]
        side.plot(
            [x_of(r) for r in members],
            seconds,
            marker="s",
            label=label or None,
            color="k" if single else None,
        )
    side.set_ylabel("refine seconds / frame")
    _x_axis(side, first, ticks, params[0])
    fig.suptitle(title or "sweep", fontsize=9)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    atomic_write(path, write)
    plt.close(fig)
