"""sam2vss: SAM2 refinement, I-SAM2 segmentation and exact evaluation for video semantic segmentation."""

__version__ = "0.1.0"


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
