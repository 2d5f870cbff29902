"""The command line: synth -> eval (fast and reference agree), errors, demo, --help; the flags
derived from the config dataclasses (every field has one, defaults are the library's except
cli.CLI_DEFAULTS)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys

import pytest

from sam2vss import cli
from sam2vss.cli import build_parser, main
from sam2vss.config import (
    PRESETS,
    BenchConfig,
    EngineConfig,
    MetricConfig,
    RefineConfig,
    RunConfig,
    SynthConfig,
)
from sam2vss.model import ModelConfig
from sam2vss.segmentor import SegmentorConfig


@pytest.fixture(scope="module")
def cli_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "ds"
    args = [
        "synth",
        "-q",
        "--out",
        str(root),
        "--videos",
        "2",
        "--frames",
        "18",
        "--height",
        "48",
        "--width",
        "64",
    ]
    assert main(args) == 0
    return root


def test_eval_json_and_reference_agree(cli_set, tmp_path, capsys):
    fast, ref = tmp_path / "fast.json", tmp_path / "ref.json"
    base = ["eval", "-q", "--data", str(cli_set), "--pred", str(cli_set / "pred_base")]
    assert main([*base, "--json", str(fast), "--per-video"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "mVC16" in out and "per video" in out
    assert main([*base, "--json", str(ref), "--reference"]) == 0
    a, b = json.loads(fast.read_text()), json.loads(ref.read_text())
    for key in ("miou", "miou_present", "fwiou", "mbiou", "mvc8", "mvc16"):
        assert 0.0 <= a[key] <= 1.0 and abs(a[key] - b[key]) < 1e-9, key
    assert (a["frames"], a["videos"], a["windows8"], a["windows16"]) == (36, 2, 20, 4)


@pytest.fixture(scope="module")
def second_method(cli_set, tmp_path_factory):
    """A second prediction folder: the base predictions with the top-left quarter of every frame
    set to the GT's class there (a method better than the base), in a folder named like a sweep
    setting (`window=4`) to check that such a path is not read as NAME=DIR."""
    from sam2vss.data import open_dataset, read_label_png
    from sam2vss.sinks import write_label_png

    ds = open_dataset(cli_set)
    out = tmp_path_factory.mktemp("sweep") / "window=4"
    for video in ds.videos("val"):
        for name, gt_name in zip(
            sorted((cli_set / "pred_base" / video).iterdir()), ds.gt_frames(video), strict=True
        ):
            pred = read_label_png(name)
            gt, _ = ds.read_gt(ds.gt_dir(video) / gt_name, 124)
            h, w = pred.shape
            quarter = gt[: h // 2, : w // 2]
            pred[: h // 2, : w // 2] = (quarter.astype(int) % 124).astype(pred.dtype) * (quarter != 255)
            write_label_png(out / video / name.name, pred)
    return out


def test_eval_compares_methods_with_deltas_equal_to_single_runs(cli_set, second_method, tmp_path, capsys):
    base_dir = cli_set / "pred_base"
    single = {}
    for name, folder in (("base", base_dir), ("refined", second_method)):
        assert (
            main(
                [
                    "eval",
                    "-q",
                    "--data",
                    str(cli_set),
                    "--pred",
                    str(folder),
                    "--json",
                    str(tmp_path / f"{name}.json"),
                ]
            )
            == 0
        )
        single[name] = json.loads((tmp_path / f"{name}.json").read_text())
    capsys.readouterr()
    both, table = tmp_path / "both.json", tmp_path / "both.csv"
    args = [
        "eval",
        "-q",
        "--data",
        str(cli_set),
        "--pred",
        f"base={base_dir}",
        "--pred",
        f"refined={second_method}",
    ]
    assert main([*args, "--json", str(both), "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("base ") for line in lines) and any(
        line.startswith("refined ") for line in lines
    )
    delta_line = next(line for line in lines if line.startswith("refined - base"))
    got = json.loads(both.read_text())
    for key in ("miou", "fwiou", "mbiou", "mvc8", "mvc16"):
        assert got[key] == single["base"][key]  # top-level keys: the first method, as before
        diff = single["refined"][key] - single["base"][key]
        assert got["deltas"]["refined - base"][key] == diff  # exactly the two single runs' difference
        assert f"{100 * diff:+6.2f}" in delta_line
    assert single["refined"]["miou"] > single["base"]["miou"]
    methods = {m["name"]: m for m in got["methods"]}
    assert list(methods) == ["base", "refined"] and methods["refined"]["pred"] == str(second_method)
    assert methods["refined"]["metrics"]["miou"] == single["refined"]["miou"]
    iou = [v for v in methods["base"]["class_iou"].values() if v is not None]
    assert len(methods["base"]["class_iou"]) == 124 and abs(sum(iou) / len(iou) - got["miou"]) < 1e-12
    assert [v["name"] for v in methods["base"]["videos"]] == ["0000_synth0", "0001_synth0"]
    assert all(0 <= v["miou"] <= 1 for v in methods["refined"]["videos"])
    rows = table.read_text().splitlines()
    assert rows[0].startswith("method,miou") and [r.split(",")[0] for r in rows[1:]] == [
        "base",
        "refined",
        "refined - base",
    ]


@pytest.mark.parametrize(
    ("preds", "message"),
    [
        (["{base}", "{other}"], "several prediction folders need a name each; pass --pred NAME=DIR"),
        (["a={base}", "a={other}"], "method names repeat (a, a)"),
        (["a={base}", "{other}"], "several prediction folders need a name each"),
    ],
    ids=["bare-repeated", "same-name", "one-unnamed"],
)
def test_eval_method_names_are_checked(cli_set, second_method, capsys, preds, message):
    values = [p.format(base=cli_set / "pred_base", other=second_method) for p in preds]
    assert main(["eval", "-q", "--data", str(cli_set), *(x for v in values for x in ("--pred", v))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_error_is_one_clear_line(cli_set, capsys):
    assert main(["eval", "-q", "--data", str(cli_set), "--pred", str(cli_set / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam2vss eval: error: prediction folder of") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_demo_writes_report(tmp_path, capsys):
    assert main(["demo", "-q", "--out", str(tmp_path / "demo"), "--videos", "1", "--frames", "17"]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "base (simulated)" in report and "(viz/0000_synth0/contact.png)" in report
    pictures = tmp_path / "demo" / "viz" / "0000_synth0"  # sam2vss viz's, linked from the report
    assert (pictures / "contact.png").is_file() and "(viz/0000_synth0/side_by_side.mp4)" in report
    out = capsys.readouterr().out
    assert (
        "base (simulated)" in out and "superpixel refiner (SLIC) - base (simulated)" in out
    )  # the delta row
    assert "0000_synth0: segments per frame" in report
    assert "### 0000_synth0 (the only video)" in report and "void light yellow" in report
    caption = next(line for line in report.splitlines() if line.startswith("0000_synth0, the only video: "))
    assert "mIoU over GT-present classes " in caption and " pp (" in caption and ", mIoU " in caption
    assert "Synthetic set: 1 video x 17 frames" in report and "Pictures of 1 video in" in report


def test_demo_ranks_videos_by_the_gain_over_gt_present_classes(monkeypatch):
    """a gains the most plain mIoU (spurious classes removed), b the most over GT-present classes:
    b is shown as helped most, each with both gains in percentage points."""
    from types import SimpleNamespace

    from sam2vss import demo

    table = {  # (video, method) -> (miou, miou_present)
        ("a", 0): (0.40, 0.70),
        ("a", 1): (0.60, 0.71),
        ("b", 0): (0.50, 0.50),
        ("b", 1): (0.52, 0.60),
        ("c", 0): (0.50, 0.50),
        ("c", 1): (0.50, 0.40),
    }

    def summarize(stats, cfg):  # stats: [one video's stats], here (name, method)
        return dict(zip(("miou", "miou_present"), table[(stats[0].name, stats[0].method)], strict=True))

    monkeypatch.setattr(demo, "summarize", summarize)
    base, refined = (
        SimpleNamespace(videos=[SimpleNamespace(name=v, method=m) for v in "abc"]) for m in (0, 1)
    )
    shown = demo.pick_videos(base, refined, None)
    assert [(s.video, s.role) for s in shown] == [("b", "helped most"), ("c", "helped least")]
    assert shown[0].gains() == (
        "mIoU over GT-present classes +10.00 pp (50.00% -> 60.00%), mIoU +2.00 pp (50.00% -> 52.00%)"
    )


def test_demo_with_random_weights_says_so(tmp_path, capsys):
    """`demo --checkpoint none --image-size 256`: SAM2 runs (fast, at 256) and the report says its
    weights are random and how many masklets each window found."""
    out = tmp_path / "demo"
    args = ["demo", "-q", "--out", str(out), "--videos", "1", "--frames", "4", "--checkpoint", "none"]
    assert main([*args, "--image-size", "256"]) == 0
    report = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in report and "sam2.1_hiera_t at 256" in report
    assert "0000_synth0: masklets per window " in report
    assert main(["demo", "-q", "--out", str(tmp_path / "d2"), "--image-size", "256"]) == 2
    assert "--image-size: only with --checkpoint" in capsys.readouterr().err


def test_module_help():
    out = subprocess.run(
        [sys.executable, "-m", "sam2vss", "--help"], capture_output=True, text=True, check=True
    )
    assert "synth" in out.stdout and "eval" in out.stdout and "demo" in out.stdout


def test_bench_rejects_unknown_presets_and_backends(capsys):
    assert main(["bench", "--preset", "exact@onnx"]) == 2
    assert "backends among" in capsys.readouterr().err
    assert main(["bench", "--preset", "quickest"]) == 2
    assert main(["bench", "--window", "0"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sam2vss 0.1.0 (torch ")


def test_help_documents_exit_codes():
    out = subprocess.run([sys.executable, "-m", "sam2vss", "--help"], capture_output=True, text=True).stdout
    assert "exit codes: 0 done, 1 some videos failed" in out and "130 interrupted" in out


def test_traceback_only_with_debug(tmp_path, capsys):
    argv = ["eval", "-q", "--data", str(tmp_path / "nope"), "--pred", str(tmp_path)]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("sam2vss eval: error: --data ")
    run = subprocess.run(
        [sys.executable, "-m", "sam2vss", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "SAM2VSS_DEBUG": "1"},
    )
    assert run.returncode == 2 and "Traceback" in run.stderr


def test_internal_error_is_one_line(monkeypatch, tmp_path, capsys):
    import sam2vss.cli

    def boom(a):
        raise RuntimeError("boom")

    monkeypatch.setattr(sam2vss.cli, "cmd_synth", boom)
    assert main(["synth", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "sam2vss synth: error: internal error (RuntimeError: boom); rerun with --debug and report it"
    )


# ------------------------------------------------------------------ the CLI is derived from the config
def _subparser(command: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


# command -> (its minimal command line, the config dataclasses whose flags it carries)
CONFIG_COMMANDS = {
    "synth": (["synth", "--out", "o"], (SynthConfig,)),
    "eval": (["eval", "--data", "d", "--pred", "p"], (MetricConfig,)),
    "refine": (
        ["refine", "--data", "d", "--pred", "p", "--out", "o"],
        (RefineConfig, EngineConfig, ModelConfig, RunConfig),
    ),
    "train-classifier": (["train-classifier", "--data", "d", "--out", "o"], (SegmentorConfig, ModelConfig)),
    "bench": (["bench"], (BenchConfig, ModelConfig)),
}
ALL_CONFIGS = (SynthConfig, MetricConfig, RefineConfig, EngineConfig, ModelConfig, RunConfig)
ALL_CONFIGS += (SegmentorConfig, BenchConfig)


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_flag(cls):
    """A field added without `config.option` metadata, or never given a flag, fails here; a nested
    config field (RefineConfig.engine) is covered by its own class's flags."""
    commands = [c for c, (_, classes) in CONFIG_COMMANDS.items() if cls in classes]
    assert commands, f"{cls.__name__} is the config of no command"
    for command in commands:
        dests = {a.dest for a in _subparser(command)._actions}
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                assert f.type in (f"{c.__name__} | None" for c in ALL_CONFIGS), f"{cls.__name__}.{f.name}"
                continue
            assert cli._dest(f) in dests, f"sam2vss {command}: no flag for {cls.__name__}.{f.name}"


@pytest.mark.parametrize("command", list(CONFIG_COMMANDS))
def test_cli_defaults_are_the_library_defaults(command):
    """Each flag's default is its field's default, except the deliberate differences of
    cli.CLI_DEFAULTS (which must still differ: a stale entry fails too)."""
    argv, classes = CONFIG_COMMANDS[command]
    a = build_parser().parse_args(argv)
    differences = cli.CLI_DEFAULTS.get(command, {})
    for cls in classes:
        for f in dataclasses.fields(cls):
            dest = cli._dest(f)
            if "help" not in f.metadata or not hasattr(a, dest):  # nested, or an override flag
                continue
            if dest in differences:
                assert getattr(a, dest) == differences[dest][0] != f.default, (command, dest)
            else:
                assert getattr(a, dest) == f.default, (
                    f"{command} --{dest}: {getattr(a, dest)!r} != {f.default!r}"
                )
    assert set(differences) <= set(vars(a)), "CLI_DEFAULTS names a flag the command does not have"


def _keyword_defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_synth_and_eval_configs_equal_the_library_defaults():
    from sam2vss.evaluate import evaluate, evaluate_methods
    from sam2vss.synth import synthesize

    a = build_parser().parse_args(CONFIG_COMMANDS["synth"][0])
    assert cli.config_from(SynthConfig, a) == SynthConfig()
    assert _keyword_defaults(synthesize) == {"progress": not a.quiet}
    a = build_parser().parse_args(CONFIG_COMMANDS["eval"][0])
    assert cli.config_from(MetricConfig, a) == MetricConfig()
    kw = _keyword_defaults(evaluate)
    assert kw.pop("cfg") is None and kw.pop("kernels") is None  # None: MetricConfig(); kernels: auto
    assert kw == {"split": a.split, "device": a.device, "workers": a.workers, "progress": not a.quiet}
    assert _keyword_defaults(evaluate_methods) == _keyword_defaults(evaluate)  # what the CLI calls


def test_refine_configs_equal_the_library_defaults():
    """`refine` with only its required flags runs what `refine_jobs(jobs, out, RefineConfig())`
    runs, once the one deliberate difference is resolved: the CLI asks for --checkpoint where the
    library takes random weights."""
    from sam2vss.refine import refine_jobs

    a = build_parser().parse_args(CONFIG_COMMANDS["refine"][0])
    with pytest.raises(ValueError, match="--checkpoint: --masks sam2 needs --checkpoint PATH"):
        cli.refine_configs(a)
    a.checkpoint = ModelConfig().checkpoint
    cfg, model_cfg, run = cli.refine_configs(a)
    assert (cfg, model_cfg, run) == (RefineConfig(), ModelConfig(), RunConfig())
    assert cfg.pipeline == "fast" and cfg.engine is None  # the preset's engine
    kw = _keyword_defaults(refine_jobs)
    assert "pipeline" not in inspect.signature(refine_jobs).parameters  # cfg.pipeline says it
    assert kw.pop("model_cfg") is None and kw.pop("protect") == ()  # None: ModelConfig() when needed
    assert kw.pop("refiner") is None  # a pipeline built beforehand: the Python API's (api.Refiner)
    assert kw == {
        "overwrite": a.overwrite,
        "progress": not a.quiet,
        "run": run,
        "save_masklets": a.save_masklets,  # an output option: not in the configuration hash
    }


def test_segmentor_configs_equal_the_library_defaults():
    from sam2vss.segmentor import segment, train

    a = build_parser().parse_args(CONFIG_COMMANDS["train-classifier"][0])
    assert cli.config_from(SegmentorConfig, a) == SegmentorConfig()
    assert cli._model_cfg_if_needed(a, False) is None  # builtin features, superpixel masklets
    assert _keyword_defaults(train) == {"model_cfg": None, "progress": not a.quiet}
    a = build_parser().parse_args(["segment", "--data", "d", "--classifier", "c", "--out", "o"])
    assert _keyword_defaults(segment) == {"base": a.base, "model_cfg": None, "progress": not a.quiet}


def test_bench_config_equals_the_library_defaults():
    from sam2vss.bench import bench_clip, run_bench

    a = build_parser().parse_args(["bench"])
    cfg = cli.config_from(BenchConfig, a)
    assert cfg == BenchConfig()
    assert cli.config_from(ModelConfig, a) == ModelConfig(image_size=256)  # CLI_DEFAULTS["bench"]
    assert _keyword_defaults(bench_clip) == {"height": cfg.height, "width": cfg.width, "progress": True}
    kw = _keyword_defaults(run_bench)
    assert kw == {"runs": cfg.runs(), "progress": True, "masks": cfg.masks, "emulate": cfg.emulate_cuda}


def test_help_lists_the_cli_library_differences():
    out = subprocess.run([sys.executable, "-m", "sam2vss", "--help"], capture_output=True, text=True).stdout
    assert "CLI defaults that differ from the library's" in out
    for command, flags in cli.CLI_DEFAULTS.items():
        for dest in flags:
            assert f"{command} --{dest.replace('_', '-')}: " in out


def _refine_cfg(*extra: str) -> RefineConfig:
    argv = [*CONFIG_COMMANDS["refine"][0], "--masks", "instances", "--checkpoint", "none", *extra]
    return cli.refine_configs(build_parser().parse_args(argv))[0]


def test_engine_flags_override_the_preset_and_key_the_output_folder():
    from sam2vss.refine import config_from_fields, refine_config_hash, refine_fields

    model = ModelConfig(image_size=256)
    cfg = _refine_cfg("--preset", "fastest", "--memory-frames", "none", "--no-low-res-stability")
    assert cfg.fast_engine() == dataclasses.replace(
        PRESETS["fastest"], memory_frames=None, low_res_stability=False
    )
    assert refine_fields(cfg)["engine"] == {"memory_frames": None, "low_res_stability": False}
    assert config_from_fields(refine_fields(cfg), cfg.pipeline) == cfg  # how manifests are read back
    fastest = _refine_cfg("--preset", "fastest")
    assert refine_config_hash(cfg, model) != refine_config_hash(fastest, model)
    # an override equal to the preset's value is the preset's configuration: the same folder
    same = _refine_cfg("--preset", "fastest", "--memory-frames", "2", "--track-scale", "0.5")
    assert same.engine is not None and refine_config_hash(same, model) == refine_config_hash(fastest, model)
    # the reference runs no engine: overrides change nothing it computes
    reference = _refine_cfg("--pipeline", "reference", "--memory-frames", "1")
    plain = _refine_cfg("--pipeline", "reference")
    assert refine_config_hash(reference, model) == refine_config_hash(plain, model)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory-frames", "0"], "--memory-frames: must be >= 1, got 0"),
        (["--encode-batch", "x"], "--encode-batch: expected an integer, got 'x'"),
        (["--bf16", "maybe"], "--bf16: invalid choice: 'maybe'"),
        (["--workers", "0"], "--workers: must be >= 1, got 0"),
        (["--window", "0"], "--window: must be >= 1, got 0"),
        (["--window-overlap", "-1"], "--window-overlap: must be >= 0, got -1"),
        (["--redetect-every", "-1"], "--redetect-every: must be >= 0, got -1"),
    ],
)
def test_generated_flags_check_their_values(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*CONFIG_COMMANDS["refine"][0], *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_vc_lengths_flag_is_comma_separated():
    a = build_parser().parse_args([*CONFIG_COMMANDS["eval"][0], "--vc-lengths", "4,8,16"])
    assert cli.config_from(MetricConfig, a).vc_lengths == (4, 8, 16)


def test_refine_with_window_overlap_runs(tmp_path, capsys):
    """refine --window-overlap 2: every frame written once, the overlap in the manifest's settings
    (another configuration than the non-overlapping one), a window per step of W - K frames."""
    from sam2vss.synth import synthesize

    cfg = SynthConfig(videos=1, frames=4, height=48, width=64, objects=2, train_videos=0, seed=2)
    root = synthesize(tmp_path / "ds", cfg, progress=False)
    out = tmp_path / "o"
    argv = ["refine", "-q", "--data", str(root), "--pred", str(root / "pred_base"), "--out", str(out)]
    argv += ["--masks", "instances", "--checkpoint", "none", "--image-size", "256", "--window", "3"]
    assert main([*argv, "--window-overlap", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["refine"]["window_overlap"] == 2
    ((video, entry),) = manifest["videos"].items()
    assert entry["frames"] == 4 and len(entry["masklets"]["per_window"]) == 2  # [0, 3), [1, 4)
    assert len(list((out / video).glob("*.png"))) == 4


def test_refine_with_redetect_every_runs(tmp_path):
    """refine --redetect-every 2: every frame written, the setting in the manifest (another
    configuration than without it), one stats entry per window counting all its masklets."""
    from sam2vss.synth import synthesize

    cfg = SynthConfig(videos=1, frames=4, height=48, width=64, objects=2, train_videos=0, seed=2)
    root = synthesize(tmp_path / "ds", cfg, progress=False)
    out = tmp_path / "o"
    argv = ["refine", "-q", "--data", str(root), "--pred", str(root / "pred_base"), "--out", str(out)]
    argv += ["--masks", "instances", "--checkpoint", "none", "--image-size", "256", "--window", "4"]
    assert main([*argv, "--redetect-every", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["refine"]["redetect_every"] == 2
    ((video, entry),) = manifest["videos"].items()
    assert entry["frames"] == 4 and len(entry["masklets"]["per_window"]) == 1
    assert len(list((out / video).glob("*.png"))) == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--window", "4", "--window-overlap", "4"],
            "window_overlap (--window-overlap) must be < window (--window)",
        ),
        (
            ["--masks", "superpixel", "--window-overlap", "1"],
            "superpixels (--masks superpixel) are per frame",
        ),
        (
            ["--masks", "superpixel", "--redetect-every", "2"],
            "redetect_every (--redetect-every 2) needs tracked masklets",
        ),
    ],
)
def test_window_overlap_errors_are_one_line(flags, message, capsys):
    assert main([*CONFIG_COMMANDS["refine"][0], *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.splitlines()[-1].startswith("sam2vss")
    assert len([line for line in err.splitlines() if "error" in line]) == 1
