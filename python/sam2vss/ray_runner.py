"""The `ray` runner: refine videos on a Ray cluster with Ray Data and a pool of refiner actors.

One whole video is one task (its windows stay in order on one worker); each actor builds the
model once and writes its outputs atomically; the driver alone writes the manifest, from the
results streamed back. An actor that dies mid-video (killed, OOM, preempted) is restarted and
its video re-run from the first frame, which rewrites the same bytes; a video that raises is
retried `retries` times inside the actor and then reported as failed.

Devices: an actor that uses the model takes one GPU, and Ray makes it the only one the actor
sees, as cuda:0. So `--device auto` or `cuda` means "the actor's own GPU" (and the CPU on a
cluster without GPUs for auto), `cpu` runs every actor on CPUs, and `cuda:N` is refused: a
driver-side index names no particular GPU of a remote actor.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sam2vss.config import RefineConfig
from sam2vss.model import ModelConfig

log = logging.getLogger(__name__)


class RefineActor:
    """Ray Data callable class: one refiner per actor, one video per call."""

    def __init__(
        self,
        jobs: list,
        out: str,
        cfg: RefineConfig,
        model_cfg: ModelConfig | None,
        retries: int,
        save_masklets: bool = False,
    ):
        from sam2vss.engine import Pipeline

        self.jobs, self.out, self.retries, self.save_masklets = jobs, Path(out), retries, save_masklets
        self.refiner = Pipeline.build(cfg, model_cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from sam2vss.video import process_video

        names, entries = [], []
        for index in batch["index"]:
            job = self.jobs[int(index)]
            entry = process_video(self.refiner, job, self.out, self.retries, save_masklets=self.save_masklets)
            entry["worker"] = f"{socket.gethostname()}:{os.getpid()}"
            names.append(job.name)
            entries.append(json.dumps(entry))
        return {"video": np.array(names), "entry": np.array(entries)}


def actor_device(model_cfg: ModelConfig | None, gpus: int) -> tuple[ModelConfig, bool]:
    """The model config each actor builds (its device as the actor sees it) and whether actors
    take a GPU; see the module docstring."""
    from dataclasses import replace

    model_cfg = model_cfg or ModelConfig()
    device = model_cfg.device
    if device.startswith("cuda:"):
        raise ValueError(
            f"--device {device} with --runner ray: Ray gives each actor one GPU, which it sees as"
            " cuda:0; pass --device cuda (each actor's own GPU), auto or cpu"
        )
    if device == "cuda" and gpus == 0:
        raise ValueError(
            "--device cuda with --runner ray: the Ray cluster has no GPUs; use --device cpu or auto"
        )
    on_gpu = device != "cpu" and gpus > 0
    return replace(model_cfg, device="cuda" if on_gpu else "cpu"), on_gpu


def init_ray(address: str | None, progress: bool) -> None:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=progress)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=progress)
    ray.data.DataContext.get_current().enable_progress_bars = progress


def run_ray(
    jobs: list,
    out: Path,
    cfg: RefineConfig,
    model_cfg: ModelConfig | None,
    retries: int,
    workers: int | None,
    address: str | None,
    progress: bool,
    save_masklets: bool = False,
) -> Iterator[tuple[str, dict]]:
    """Yields (video, manifest entry) as videos finish, in completion order. `save_masklets`: the
    actors also write each frame's masklet ids (refine --save-masklets)."""
    import ray
    import ray.data

    init_ray(address, progress)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    uses_model = cfg.masks != "superpixel"
    model_cfg, on_gpu = actor_device(model_cfg, gpus) if uses_model else (model_cfg, False)
    size = workers or (gpus if on_gpu else max(1, int(ray.cluster_resources().get("CPU", 1))))
    log.info("ray runner: %d actors, %s per actor", size, "1 GPU" if on_gpu else "1 CPU")
    ds = ray.data.from_items([{"index": i} for i in range(len(jobs))], override_num_blocks=len(jobs))
    ds = ds.map_batches(
        RefineActor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={
            "jobs": jobs,
            "out": str(out),
            "cfg": cfg,
            "model_cfg": model_cfg,
            "retries": retries,
            "save_masklets": save_masklets,
        },
        num_cpus=1,
        num_gpus=1 if on_gpu else 0,
        # Ray Data's actor pools restart dead actors and retry their in-flight tasks by default;
        # re-running a video rewrites the same bytes. tests/test_scale.py kills one mid-video.
    )
    for row in ds.iter_rows():
        yield str(row["video"]), json.loads(row["entry"])
