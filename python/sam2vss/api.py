"""The Python entry points, exported from `sam2vss`: `Refiner` and `evaluate_folder`.

A `Refiner` is built once from a configuration (SAM2 is built once) and refines one video held in
memory or a whole dataset folder, with the same pipeline, validation and outputs as `sam2vss
refine`; `evaluate_folder` is `sam2vss eval` returning its metrics. Everything else stays
reachable in its module (engine.Pipeline, refine.refine_jobs, evaluate.evaluate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sam2vss.config import MetricConfig, RefineConfig, RunConfig
from sam2vss.data import open_dataset
from sam2vss.engine import Pipeline, redetect_frames
from sam2vss.evaluate import EvalResult, evaluate
from sam2vss.labels import bad_label_ids
from sam2vss.model import ModelConfig
from sam2vss.reference import Window, WindowStats
from sam2vss.refine import dataset_jobs, refine_jobs
from sam2vss.report import RefineReport
from sam2vss.video import window_spans


class Refiner:
    """SAM2 refinement of a base model's video semantic segmentation (the paper's refiner).

    Parameters
    ----------
    config: the refiner's settings (RefineConfig: pipeline, preset, masklet source, window,
        thresholds, vote rule); default the paper's, with the fast pipeline's `exact` preset.
    model: the SAM2 model (ModelConfig: name, checkpoint, image size, device); default Hiera-L
        with `checkpoint="none"`, i.e. random weights, which find no meaningful masklets: pass a
        checkpoint for real use. Unused with superpixel masklets.

    Attributes: `pipeline` (engine.Pipeline, its parts), `window_stats` (the masklets and
    coverage of each window of the last `refine_video` call).
    """

    def __init__(self, config: RefineConfig | None = None, model: ModelConfig | None = None):
        self.config = config or RefineConfig()
        self.model = model if self.config.masks != "superpixel" else None
        self.pipeline = Pipeline.build(self.config, self.model)
        self.window_stats: list[WindowStats] = []

    def refine_video(
        self,
        frames: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        instances: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """Refine one video in memory; returns the refined (T, h, w) uint8 labels.

        frames: (T, H, W, 3) uint8 RGB. labels: (T, h, w) integer base labels, class ids 0..C-1
        (any resolution; the output has it). instances: (T, H, W) instance ids (0: none), needed
        with masks="instances" (each window prompts its first frame's instances)."""
        frames, labels = _as_tensor(frames, "frames"), _as_tensor(labels, "labels")
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                f"frames: expected (T, H, W, 3) uint8 RGB, got {frames.dtype} {tuple(frames.shape)}"
            )
        if labels.dim() != 3 or labels.shape[0] != frames.shape[0] or labels.is_floating_point():
            raise ValueError(
                f"labels: expected (T, h, w) integer class ids with T = {frames.shape[0]} as the"
                f" frames, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels: negative id {int(labels.min())}; class ids are 0..C-1")
        h = labels.shape[1]
        bad = bad_label_ids(
            labels.reshape(-1, labels.shape[2]).numpy(), self.config.num_classes, void_ok=False
        )
        if bad is not None:
            raise ValueError(
                f"labels: id {bad[0]} in frame {bad[3] // h} at x={bad[2]}, y={bad[3] % h} ({bad[1]} pixels)"
                f" is not a class in 0..{self.config.num_classes - 1}; map it to a class (or set num_classes)"
            )
        if self.config.masks == "instances" and instances is None:
            raise ValueError("instances: masks='instances' needs (T, H, W) instance ids; pass instances=")
        p, cfg = self.pipeline, self.config
        frames, labels = frames.permute(0, 3, 1, 2).contiguous(), labels.to(torch.uint8)
        out, self.window_stats, carry = [], [], None
        for span in window_spans(frames.shape[0], cfg.window, cfg.window_overlap):  # as `refine`
            f = frames[span.start : span.stop].to(p.frames_device)
            ids = None if instances is None else np.asarray(instances[span.start])
            later = {}  # the re-detection frames' instance ids
            if instances is not None:
                later = {
                    t: np.asarray(instances[span.start + t])
                    for t in redetect_frames(cfg.redetect_every, span.stop - span.start)
                }
            s = labels[span.start : span.stop].to(p.device)
            window = Window(f, s, None, ids, p.prepare(f), span.overlap, span.next_keyframe, later)
            refined = p.refine_window(window, carried=carry)
            carry = refined.carry
            refined.wait()  # a GPU's copy back into pinned memory
            out.append(refined.labels[span.overlap :].numpy().copy())  # overlap: the earlier window's
            self.window_stats.append(refined.stats)
        return np.concatenate(out)

    def refine_folder(
        self,
        data: str | Path,
        pred: str | Path,
        out: str | Path,
        split: str = "val",
        overwrite: bool = False,
        progress: bool = True,
        run: RunConfig | None = None,
        save_masklets: bool = False,
    ) -> RefineReport:
        """Refine every video of a VSPW-layout dataset folder, as `sam2vss refine` does.

        data: the dataset root (data/<video>/origin/*.jpg, <split>.txt). pred: the base labels'
        folder, pred/<video>/<frame>.png. out: the output folder (guarded, locked, resumable; see
        README "Bad input -> what happens"). split: the split file's name. overwrite: move an
        earlier configuration's outputs to OUT/.superseded/ instead of refusing. progress: a
        progress bar. run: the runner (RunConfig: local or ray, retries, workers). save_masklets:
        also write each frame's masklet ids, out/<video>/masklets/<frame>.png (16-bit, index + 1
        of the masklet that won the pixel, 0 = none)."""
        jobs = dataset_jobs(open_dataset(Path(data)), Path(pred), split)
        run = run or RunConfig()
        refiner = self.pipeline if run.runner == "local" else None
        return refine_jobs(
            jobs,
            Path(out),
            self.config,
            self.model,
            overwrite,
            progress,
            run,
            refiner=refiner,
            save_masklets=save_masklets,
        )


def evaluate_folder(
    data: str | Path,
    pred: str | Path,
    split: str = "val",
    config: MetricConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """The metrics of a prediction folder, as `sam2vss eval` computes them (METRICS.md 8).

    data: the dataset root. pred: pred/<video>/<frame>.png label maps. split: the split file's
    name. config: MetricConfig (class count, boundary kernel, VC lengths and rules). device:
    where to compute (default auto). Returns an EvalResult: `.metrics` (mIoU, fwIoU, mBIoU, mVC8,
    mVC16 as shares, plus counts) and `.videos` (per-video statistics)."""
    return evaluate(open_dataset(Path(data)), Path(pred), split, config, device, progress=progress)


def _as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
