"""The one module that imports `sam2`: model building, checkpoints, image size, device, dtype.

Hydra and SAM2's quirks stay here: configs are composed from the installed package with
overrides, checkpoints are loaded by us (SAM2's loader logs the key lists and raises a bare
RuntimeError), and the image predictor's backbone feature sizes, hard-coded for 1024 in SAM2,
follow `image_size`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sam2vss.config import option

log = logging.getLogger(__name__)

SIZES = ("t", "s", "b+", "l")
MODEL_CONFIGS = {
    **{f"sam2.1_hiera_{s}": f"configs/sam2.1/sam2.1_hiera_{s}.yaml" for s in SIZES},
    **{f"sam2_hiera_{s}": f"configs/sam2/sam2_hiera_{s}.yaml" for s in SIZES},
}
ALIASES = {s: f"sam2.1_hiera_{s}" for s in SIZES}


class ModelError(ValueError):
    """A model or checkpoint problem; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """Which SAM2 to build and where to run it."""

    name: str = option(
        "sam2.1_hiera_t",
        "sam2.1_hiera_t|s|b+|l (or t, s, b+, l), sam2_hiera_* for SAM2",
        flag="model",
    )
    checkpoint: str = option(
        "none", "SAM2 checkpoint .pt, or 'none' for random weights (plumbing and speed only)"
    )
    image_size: int = option(1024, "SAM2 input size: a multiple of 32 from 128 up (256+ for detection)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    seed: int = option(0, "random-weight initialisation seed (--checkpoint none)", flag="model-seed")

    def __post_init__(self) -> None:
        name = ALIASES.get(self.name, self.name)
        if name not in MODEL_CONFIGS:
            raise ModelError(
                f"unknown model {self.name!r}; choose one of {', '.join([*ALIASES, *MODEL_CONFIGS])}"
            )
        object.__setattr__(self, "name", name)
        if self.image_size < 128 or self.image_size % 32:
            raise ModelError(f"--image-size must be a multiple of 32 and >= 128, got {self.image_size}")

    @property
    def random_weights(self) -> bool:
        return self.checkpoint.lower() == "none"


def model_identity(cfg: ModelConfig) -> dict:
    """What about a model changes its outputs (not the device): name, image size, seed and the
    checkpoint's name and size. Keys refine manifests and compiled-engine caches."""
    m = asdict(cfg)
    m.pop("device")
    ckpt = Path(cfg.checkpoint)
    if not cfg.random_weights:  # a missing file is reported by the model loader
        m["checkpoint"] = f"{ckpt.name}:{ckpt.stat().st_size}" if ckpt.is_file() else str(ckpt)
    return m


def resolve_device(device: str = "auto") -> torch.device:
    """An indexed device: `auto` is the current CUDA device when there is one, else the CPU;
    `cuda` is the current CUDA device; `cuda:N` must exist. (An index-less torch.device("cuda")
    compares unequal to the cuda:0 tensors decoders return, so nothing downstream sees one.)"""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"--device {device}: not a device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ModelError(
            f"--device {device}: unsupported device type {dev.type!r}; use auto, cpu, cuda or cuda:N"
        )
    if not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ModelError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1};"
            " pick one of them (or auto)"
        )
    return torch.device("cuda", index)


def use_device(device: str = "auto") -> torch.device:
    """`resolve_device`, and make a CUDA device the current one: CuPy's kernels, DLPack exports
    and torch's index-less "cuda" all follow the current device. Called once by each refiner and
    evaluation at construction."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (SAM2's own recipe); full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _load_state(model: torch.nn.Module, cfg: ModelConfig) -> None:
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise ModelError(
            f"checkpoint {path} not found; download the {cfg.name} checkpoint from the SAM2 release"
            " page, or pass --checkpoint none for random weights (plumbing and speed tests only)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled objects
        raise ModelError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); the file is truncated or"
            " not a SAM2 checkpoint: download it again"
        ) from e
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds no state dict (expected {{'model': state_dict}})")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {len(keys)} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        raise ModelError(
            f"checkpoint {path} does not match model {cfg.name} ({detail}); pass the --model the"
            " checkpoint was trained as (e.g. a sam2.1_hiera_l checkpoint needs --model l)"
        )
    model.load_state_dict(state)


def build(cfg: ModelConfig, video: bool = True) -> torch.nn.Module:
    """SAM2VideoPredictor (video=True) or SAM2Base with weights, in eval mode on its device."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    device = resolve_device(cfg.device)
    overrides = [] if cfg.image_size == 1024 else [f"++model.image_size={cfg.image_size}"]
    builder = build_sam2_video_predictor if video else build_sam2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = builder(
            MODEL_CONFIGS[cfg.name], ckpt_path=None, device="cpu", hydra_overrides_extra=overrides
        )
    if cfg.random_weights:
        log.warning(
            "*** %s with RANDOM WEIGHTS (--checkpoint none): masks are meaningless; use this for"
            " plumbing and speed only ***",
            cfg.name,
        )
    else:
        _load_state(model, cfg)
    return model.to(device).eval()


def fix_feature_sizes(predictor, image_size: int) -> None:
    """SAM2ImagePredictor hard-codes the backbone feature sizes for 1024 (256, 128, 64)."""
    predictor._bb_feat_sizes = [(image_size // 4,) * 2, (image_size // 8,) * 2, (image_size // 16,) * 2]


def mask_generator(model: torch.nn.Module, **kwargs):
    """The official SAM2AutomaticMaskGenerator on `model`, with feature sizes following its image size."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    amg = SAM2AutomaticMaskGenerator(model, **kwargs)
    fix_feature_sizes(amg.predictor, model.image_size)
    return amg


def image_transform(model: torch.nn.Module):
    """SAM2ImagePredictor's own input transform for `model` (resize to its image size, /255,
    mean/std): the `exact` preset detects on exactly the official generator's input."""
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)
