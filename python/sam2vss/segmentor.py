"""I-SAM2 (the paper's Fig. 2, Eq. 3): classify masklets from pooled encoder features with an MLP.

v_i = sum_x F(x) m_i(x) / (sum_x m_i(x) + eps), with the masklet resized to the feature map
(area interpolation, i.e. the fraction of each feature cell the masklet covers); an MLP maps
v_i to class scores. Uncovered pixels take the base model's label ("I-SAM2 base") or, without a
base, the class of the nearest masklet, so every pixel is labelled.

Encoders: `builtin` (a small fixed convolutional feature extractor for tests and CPU use),
`sam2` (SAM2's image encoder, the `image_embed` level), or `MODULE:CALLABLE` returning any
torch module that maps (B, 3, H, W) RGB in [0, 1] to (B, C, h, w) features; e.g. a VSS model's
backbone wrapped to return its last feature map gives I-CFFM.
Masklets: `superpixel` (per frame, no weights), `instances` (the dataset's instance masks;
tests), or `sam2` (the refiner's masklets: AMG + propagation, needs a checkpoint).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sam2vss.config import RefineConfig, check_fields, option
from sam2vss.data import Dataset, list_frames, read_label_png
from sam2vss.engine import Pipeline
from sam2vss.labels import IGNORE
from sam2vss.model import ModelConfig
from sam2vss.reference import Window
from sam2vss.sinks import atomic_write, write_label_png
from sam2vss.sources import open_source, to_rgb
from sam2vss.vote import aggregate, paint_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentorConfig:
    features: str = option(
        "builtin",
        "encoder: builtin, sam2, or MODULE:CALLABLE returning a (B,3,H,W)->(B,C,h,w) module",
    )
    masklets: str = option("superpixel", "masklet source", choices=("superpixel", "instances", "sam2"))
    num_classes: int = option(124, "classes of the classifier")
    depth: int = option(2, "hidden layers of the MLP")
    width: int = option(256, "hidden width of the MLP")
    dropout: float = option(0.1, "dropout of the MLP")
    epochs: int = option(30, "training epochs")
    batch_size: int = option(256, "masklets per batch")
    lr: float = option(2e-3, "learning rate")
    weight_decay: float = option(0.01, "weight decay")
    class_balance: bool = option(False, "weight the loss by 1/sqrt(class frequency)")
    purity: float = option(0.6, "keep training masklets whose majority GT class covers this fraction")
    frame_stride: int = option(1, "use every n-th frame for training")
    seed: int = option(0, "seed of the builtin encoder and the MLP")
    window: int = option(8, "masklet windows (--masklets sam2)")
    grid: int = option(16, "AMG points per side (--masklets sam2)", low=1)
    pred_iou_thresh: float = option(
        0.6,
        "AMG predicted-IoU threshold of the masklets (--masklets sam2), as the refiner's",
        low=0.0,
        high=1.0,
    )
    stability_thresh: float = option(
        0.8, "AMG stability-score threshold (--masklets sam2)", low=0.0, high=1.0
    )
    image_size: int = option(1024, "SAM2 encoder input (--features sam2)")

    def __post_init__(self) -> None:
        check_fields(self)


class BuiltinEncoder(nn.Module):
    """A fixed (seeded, untrained) conv stack at 1/4 resolution plus blurred colour: 67 channels.

    Cheap on a CPU, deterministic, and enough to separate textured colour regions; a stand-in
    to test the pipeline, not a model of the world."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 32, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()), generator=g)
            nn.init.zeros_(conv.bias)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        colour = F.avg_pool2d(x, 4, ceil_mode=True)[..., : h.shape[-2], : h.shape[-1]]
        return torch.cat([h, 4 * colour], dim=1)


class SAM2Encoder(nn.Module):
    """SAM2's image encoder, its stride-16 `image_embed` level (with no_mem_embed added)."""

    def __init__(self, model_cfg: ModelConfig):
        super().__init__()
        from sam2vss import model as sam2_model

        self.sam = sam2_model.build(model_cfg, video=False)
        self.size = model_cfg.image_size
        device = next(self.sam.parameters()).device  # the model is built on its device
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).to(device))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1).to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        out = self.sam.forward_image((x - self.mean) / self.std)
        _, vision_feats, _, sizes = self.sam._prepare_backbone_features(out)
        top = vision_feats[-1] + self.sam.no_mem_embed  # (hw, B, C)
        h, w = sizes[-1]
        return top.permute(1, 2, 0).reshape(x.shape[0], -1, h, w)


def build_encoder(cfg: SegmentorConfig, model_cfg: ModelConfig | None) -> nn.Module:
    if cfg.features == "builtin":
        return BuiltinEncoder(cfg.seed).eval()
    if cfg.features == "sam2":
        return SAM2Encoder(model_cfg or ModelConfig(image_size=cfg.image_size)).eval()
    module, _, name = cfg.features.partition(":")
    if not name:
        raise ValueError(f"--features {cfg.features!r}: expected builtin, sam2 or MODULE:CALLABLE")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--features {cfg.features!r}: cannot import {name} from {module} ({e})") from e
    return factory().eval()


def masked_average(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 3: (C, h, w) features and (N, H, W) masks -> (N, C) pooled vectors."""
    if masks.shape[0] == 0:
        return features.new_zeros((0, features.shape[0]))
    weights = F.interpolate(masks[:, None].float(), size=features.shape[-2:], mode="area")[:, 0]
    return torch.einsum("nhw,chw->nc", weights, features) / (weights.sum((1, 2))[:, None] + eps)


class MLP(nn.Module):
    def __init__(self, dim: int, num_classes: int, depth: int, width: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        for i in range(depth):
            layers += [nn.Linear(dim if i == 0 else width, width), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(width if depth else dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------- masklets per frame
def _masklet_frames(
    cfg: SegmentorConfig, refiner: Pipeline | None, dataset: Dataset, video: str
) -> Iterator[tuple[str, np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """(frame name, RGB frame, (N, H, W) bool masklets, shared SAM2 features or None) per frame.

    With SAM2 masklets and SAM2 features, the features are the ones the predictor computed while
    tracking (no second encoder pass)."""
    inst_dir = dataset.instance_dir(video)
    inst_paths = [inst_dir / n for n in list_frames(inst_dir)] if cfg.masklets == "instances" else []
    with open_source(dataset.image_dir(video), "frames") as source:
        step = cfg.window if cfg.masklets == "sam2" else 1
        for start, frames in zip(range(0, len(source), step), source.windows(step), strict=True):
            yield from _window_masklets(cfg, refiner, source, inst_paths, start, frames)


def _window_masklets(cfg, refiner, source, inst_paths: list[Path], start: int, frames: torch.Tensor):
    """The (name, RGB frame, masklets, shared features) of one window of frames."""
    names = source.names[start : start + frames.shape[0]]
    imgs = to_rgb(frames)
    if cfg.masklets == "sam2":
        share = cfg.features == "sam2"
        blank = torch.zeros((len(imgs), *imgs[0].shape[:2]), dtype=torch.uint8)
        window = Window(frames, blank, source.paths[start : start + len(imgs)], None)
        masks0, _ = refiner.source.keyframe(window)
        if masks0.shape[0] == 0:
            for name, img in zip(names, imgs, strict=True):
                yield name, img, torch.zeros((0, *img.shape[:2]), dtype=torch.bool), None
            return
        outputs = refiner.tracker.track(window, masks0, with_features=share)
        for name, img, o in zip(names, imgs, outputs, strict=True):
            logits, feats = o if share else (o, None)
            yield name, img, logits > 0, feats
        return
    (name,), (img,) = names, imgs
    if cfg.masklets == "instances":
        ids = torch.from_numpy(read_label_png(inst_paths[start]).astype(np.int64))
        present = [k for k in ids.unique().tolist() if k != 0]
        masks = ids[None] == torch.tensor(present, dtype=torch.int64)[:, None, None]
    else:
        from sam2vss.masklets import superpixels

        seg_cfg = RefineConfig(masks="superpixel", vote_scope="frame")
        seg = torch.from_numpy(superpixels(img, seg_cfg).astype(np.int64))
        masks = seg[None] == torch.arange(int(seg.max()) + 1)[:, None, None]
    yield name, img, masks, None


def _refiner(cfg: SegmentorConfig, model_cfg: ModelConfig | None) -> Pipeline | None:
    if cfg.masklets != "sam2":
        return None
    if model_cfg is None:
        raise ValueError("masklets=sam2 needs a SAM2 model (--checkpoint PATH, or none for random weights)")
    refine_cfg = RefineConfig(
        masks="sam2",
        window=cfg.window,
        grid=cfg.grid,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_thresh=cfg.stability_thresh,
    )
    return Pipeline.reference(refine_cfg, model_cfg)


def _encoder(cfg: SegmentorConfig, model_cfg: ModelConfig | None) -> nn.Module | None:
    """None when SAM2 masklets already supply SAM2 features (no second encoder pass)."""
    return None if cfg.features == "sam2" and cfg.masklets == "sam2" else build_encoder(cfg, model_cfg)


@torch.inference_mode()
def _features(encoder: nn.Module, img: np.ndarray) -> torch.Tensor:
    """(C, h, w) float32 host features of one RGB frame, computed on the encoder's device."""
    weight = next(iter([*encoder.parameters(), *encoder.buffers()]), None)  # a plug-in may have none
    device = weight.device if weight is not None else torch.device("cpu")
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    return encoder(x.to(device))[0].float().cpu()


# ---------------------------------------------------------------------------- training
def collect(
    dataset: Dataset, split: str, cfg: SegmentorConfig, encoder: nn.Module, refiner, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and majority GT classes of the pure, non-void training masklets."""
    xs, ys = [], []
    for video in tqdm(dataset.videos(split), desc="masklet features", unit="video", disable=not progress):
        gt_names = dataset.gt_frames(video)
        for t, (_, img, masks, shared) in enumerate(_masklet_frames(cfg, refiner, dataset, video)):
            if t % cfg.frame_stride or masks.shape[0] == 0:
                continue
            gt, _ = dataset.read_gt(dataset.gt_dir(video) / gt_names[t])
            g = torch.from_numpy(gt).long().clamp(max=cfg.num_classes)  # void/others -> C
            hist = torch.stack([torch.bincount(g[m], minlength=cfg.num_classes + 1) for m in masks])
            total = hist.sum(1)
            best = hist[:, : cfg.num_classes].max(1)
            keep = (total > 0) & (best.values >= cfg.purity * total)  # mostly void fails this too
            if keep.any():
                feats = shared if shared is not None else _features(encoder, img)
                xs.append(masked_average(feats, masks[keep]))
                ys.append(best.indices[keep])
    if not xs:
        raise ValueError(f"no training masklets in split {split!r} (purity >= {cfg.purity}); lower --purity?")
    return torch.cat(xs), torch.cat(ys)


def train(
    dataset: Dataset,
    split: str,
    cfg: SegmentorConfig,
    out: Path,
    model_cfg: ModelConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train the masklet classifier and save OUT (.pt with its configuration); returns the log."""
    torch.manual_seed(cfg.seed)
    encoder = _encoder(cfg, model_cfg)
    x, y = collect(dataset, split, cfg, encoder, _refiner(cfg, model_cfg), progress)
    mlp = MLP(x.shape[1], cfg.num_classes, cfg.depth, cfg.width, cfg.dropout)
    weight = None
    if cfg.class_balance:
        freq = torch.bincount(y, minlength=cfg.num_classes).float()
        weight = torch.where(freq > 0, freq.clamp(min=1).rsqrt(), torch.zeros_like(freq))
        weight = weight / weight[freq > 0].mean()
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=cfg.lr * 0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress)
    for _ in bar:
        mlp.train()
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(mlp(x[idx]), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    ckpt = {
        "config": asdict(cfg),
        "model": asdict(model_cfg) if model_cfg else None,
        "dim": x.shape[1],
        "state_dict": mlp.state_dict(),
        "losses": losses,
        "samples": len(x),
    }
    atomic_write(Path(out), lambda tmp: torch.save(ckpt, tmp))
    return ckpt


def load(path: Path) -> tuple[SegmentorConfig, ModelConfig | None, MLP]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"classifier {path} not found; train one with `sam2vss train-classifier`") from None
    except Exception as e:
        raise ValueError(f"classifier {path} cannot be read ({e}); is it a `train-classifier` output?") from e
    cfg = SegmentorConfig(**ckpt["config"])
    model_cfg = ModelConfig(**ckpt["model"]) if ckpt.get("model") else None
    mlp = MLP(ckpt["dim"], cfg.num_classes, cfg.depth, cfg.width, cfg.dropout)
    mlp.load_state_dict(ckpt["state_dict"])
    return cfg, model_cfg, mlp.eval()


# ---------------------------------------------------------------------------- segmentation
def _nearest_fill(ids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class of the nearest covered pixel for every pixel (Euclidean distance transform)."""
    from scipy.ndimage import distance_transform_edt

    covered = (ids >= 0).numpy()
    _, (iy, ix) = distance_transform_edt(~covered, return_indices=True)
    return classes[ids[torch.from_numpy(iy), torch.from_numpy(ix)].long()]


@torch.inference_mode()
def segment(
    dataset: Dataset,
    split: str,
    classifier: Path,
    out: Path,
    base: Path | None = None,
    model_cfg: ModelConfig | None = None,
    progress: bool = True,
) -> int:
    """Write OUT/<video>/<frame>.png for every frame of `split`; returns the frame count."""
    cfg, ckpt_model, mlp = load(classifier)
    model_cfg = model_cfg or ckpt_model
    encoder = _encoder(cfg, model_cfg)
    refiner = _refiner(cfg, model_cfg)
    frames = 0
    for video in tqdm(dataset.videos(split), desc="segment", unit="video", disable=not progress):
        for name, img, masks, shared in _masklet_frames(cfg, refiner, dataset, video):
            h, w = img.shape[:2]
            if masks.shape[0]:
                feats = shared if shared is not None else _features(encoder, img)
                classes = mlp(masked_average(feats, masks)).argmax(1).to(torch.uint8)
                ids = aggregate(masks, paint_order(masks.flatten(1).sum(1), "area"))
            else:
                classes, ids = torch.zeros(0, dtype=torch.uint8), torch.full((h, w), -1, dtype=torch.int32)
            if base is not None:
                fill = torch.from_numpy(read_label_png(Path(base) / video / f"{name}.png"))
            elif masks.shape[0]:
                fill = _nearest_fill(ids, classes)
            else:
                raise ValueError(f"{video}/{name}: no masklets and no --base to fill from")
            labels = torch.where(ids >= 0, classes[ids.clamp(min=0).long()] if len(classes) else fill, fill)
            if int(labels.max()) >= cfg.num_classes or int(labels.max()) == IGNORE:
                raise ValueError(f"{video}/{name}: labels out of range (check --base)")
            write_label_png(Path(out) / video / f"{name}.png", labels.numpy().astype(np.uint8))
            frames += 1
    return frames


def write_majority_baseline(dataset: Dataset, train_split: str, split: str, out: Path) -> int:
    """The majority-class baseline: every pixel of `split` gets the most frequent GT class of
    `train_split` (the floor a masklet classifier must clear). Returns that class."""
    counts = torch.zeros(256, dtype=torch.int64)
    for video in dataset.videos(train_split):
        for name in dataset.gt_frames(video):
            gt, _ = dataset.read_gt(dataset.gt_dir(video) / name)
            counts += torch.bincount(torch.from_numpy(gt).view(-1).long(), minlength=256)
    counts[IGNORE] = 0
    majority = int(counts.argmax())
    for video in dataset.videos(split):
        for name in dataset.gt_frames(video):
            gt, _ = dataset.read_gt(dataset.gt_dir(video) / name)
            write_label_png(Path(out) / video / name, np.full(gt.shape, majority, np.uint8))
    return majority
