"""Label conventions of VSPW and VIPSeg: class names, the palette, GT reduction, panomasks.

The one decision to know: everything downstream of this module sees *reduced* ground truth
(0..C-1 valid, 255 ignore; METRICS.md 1.2) except video consistency under `vc_gt="raw"`, and
predictions are always class ids 0..C-1. `bad_label_ids` is the one label-id policy every reader
applies (README "Labels and void").
"""

from __future__ import annotations

import numpy as np

IGNORE = 255
NUM_CLASSES = 124

# 0-based evaluated classes after the VSPW reduction (METRICS.md 1.2); same order in VIPSeg.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide",
    "handrail_or_fence", "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass",
    "sand", "athletic_field", "road", "path", "crosswalk", "building", "house", "bridge", "tower",
    "windmill", "well_or_well_lid", "other_construction", "sky", "mountain", "stone", "wood",
    "ice", "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella",
    "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle",
    "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant",
    "toy", "ball_net", "backboard", "skateboard", "bat", "ball",
    "cupboard_or_showcase_or_storage_rack", "box", "traveling_case_or_trolley_case", "basket",
    "bag_or_package", "trash_can", "cage", "plate", "tub_or_bowl_or_pot", "bottle_or_cup",
    "barrel", "fishbowl", "bed", "pillow", "table_or_desk", "chair_or_seat", "bench", "sofa",
    "shelf", "bathtub", "gun", "commode", "roaster", "other_machine", "refrigerator",
    "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard",
    "tissue", "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard",
    "other_electronic_product", "fruit", "food", "instrument", "train",
)  # fmt: skip
assert len(CLASS_NAMES) == NUM_CLASSES


def _vspw_palette() -> np.ndarray:
    """The palette CFFM/MRCFA/TV3S write prediction PNGs with: index i -> RGB.

    Indices 0..21 follow the PASCAL VOC bit pattern (with 191 where VOC has 192), indices 22..255
    are grey levels (i, i, i). Written as a rule, not a table, so it is checkable at a glance.
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        if i >= 22:
            pal[i] = i
            continue
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = [191 if v == 192 else v for v in (r, g, b)]
    return pal


VSPW_PALETTE: np.ndarray = _vspw_palette()  # (256, 3) uint8


def reduce_vspw(raw: np.ndarray) -> np.ndarray:
    """Raw VSPW mask (0 others, 1..124 classes, 255 void) -> 0..123 valid, 255 ignore.

    The official three-line recipe in uint8 arithmetic: 0 -> 255, minus 1, 254 -> 255.
    """
    if raw.dtype != np.uint8:
        raise TypeError(f"reduce_vspw: expected a uint8 mask, got {raw.dtype}")
    out = raw.copy()
    out[out == 0] = IGNORE
    out -= 1
    out[out == 254] = IGNORE
    return out


def vipseg_to_semantic(panomask: np.ndarray) -> np.ndarray:
    """VIPSeg panomask (0 void, stuff = cat+1, thing = (cat+1)*100 + inst) -> 0..123 / 255.

    METRICS.md 5.2: `sem = where(v < 125, v, v // 100) - 1; sem[v == 0] = 255`.
    """
    v = panomask.astype(np.int64)
    sem = np.where(v < 125, v, v // 100) - 1
    sem[v == 0] = IGNORE
    bad = (v != 0) & ((sem < 0) | (sem >= NUM_CLASSES))
    if bad.any():
        raise ValueError(
            f"vipseg_to_semantic: panomask value {int(v[bad][0])} maps to no class in"
            f" 0..{NUM_CLASSES - 1}; expected a VIPSeg panomask (16-bit PNG from panomasks/)"
        )
    return sem.astype(np.uint8)


def bad_label_ids(labels: np.ndarray, num_classes: int, void_ok: bool) -> tuple[int, int, int, int] | None:
    """The label-id policy of sam2vss, the one place it is written (README "Labels and void").

    A label map holds class ids 0..C-1. 255 (IGNORE) is void: allowed in (reduced) ground truth,
    where it means "not evaluated" (`void_ok=True`), and refused in predictions and base labels,
    since every output pixel needs a class (DESIGN.md: labels written are always 0..C-1; a VPS
    model's unassigned pixels must be filled with a class first, METRICS.md 5.3). Any other id is
    an error, never clipped or ignored: a base id >= C would land in another masklet's votes.

    Returns None when the map is valid, else (smallest bad id, pixels holding bad ids, x, y of the
    first pixel with that id) for the error message.
    """
    top = int(labels.max(initial=0))
    if top < num_classes:  # the common case: one pass, no histogram
        return None
    counts = np.bincount(labels.ravel(), minlength=256)
    counts[:num_classes] = 0
    if void_ok:
        counts[IGNORE] = 0
    bad = np.flatnonzero(counts)
    if bad.size == 0:
        return None
    value = int(bad[0])
    y, x = (int(i) for i in np.argwhere(labels == value)[0])
    return value, int(counts.sum()), x, y
