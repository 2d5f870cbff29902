"""sam2vss: SAM2 refinement, I-SAM2 segmentation and exact evaluation for video semantic segmentation.

The Python entry points (api.py), imported on first use so that `import sam2vss` stays light:
    Refiner          built once from RefineConfig + ModelConfig; refine_video (in memory),
                     refine_folder (a dataset folder, as `sam2vss refine`)
    evaluate_folder  the metrics of a prediction folder (as `sam2vss eval`)
    RefineConfig, ModelConfig, MetricConfig, RunConfig, SynthConfig   their settings
    synthesize       a deterministic synthetic VSPW-layout dataset with base predictions
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Refiner": "sam2vss.api",
    "evaluate_folder": "sam2vss.api",
    "RefineConfig": "sam2vss.config",
    "MetricConfig": "sam2vss.config",
    "RunConfig": "sam2vss.config",
    "SynthConfig": "sam2vss.config",
    "ModelConfig": "sam2vss.model",
    "synthesize": "sam2vss.synth",
}
__all__ = ["__version__", "versions", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam2vss' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def versions() -> dict[str, str]:
    """Versions of what changes results, from package metadata (nothing is imported): the refine
    run header and `sam2vss --version`."""
    import platform
    from importlib import metadata

    out = {"sam2vss": __version__}
    for name in ("torch", "torchvision", "sam2"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out
