"""sam2vss: SAM2 refinement, I-SAM2 segmentation and exact evaluation for video semantic segmentation."""

__version__ = "0.1.0"
