"""Video sources for the refiner: a frame folder (VSPW layout) or a video file (PyAV).

Frames come in sorted-name order with an exact count. A frame folder also exposes its file
paths, so the reference refiner hands SAM2 the original JPEG bytes (symlinks) instead of a
re-encoded copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2vss.data import IMAGE_SUFFIXES, DataError, count_video_frames, list_frames


@dataclass(frozen=True)
class FrameFolder:
    """Frames as image files in one folder (VSPW `origin/`), sorted by name."""

    folder: Path

    @property
    def names(self) -> list[str]:
        return [Path(n).stem for n in list_frames(self.folder, IMAGE_SUFFIXES, "frame folder")]

    @property
    def paths(self) -> list[Path]:
        return [self.folder / n for n in list_frames(self.folder, IMAGE_SUFFIXES, "frame folder")]

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames start..stop-1."""
        for path in self.paths[start:stop]:
            try:
                with Image.open(path) as im:
                    yield np.asarray(im.convert("RGB"))
            except OSError as e:
                raise DataError(f"{path}: cannot decode image ({e}); the file is damaged or truncated") from e


@dataclass(frozen=True)
class VideoFile:
    """Frames decoded from a video file with PyAV (FFmpeg), in presentation order."""

    path: Path

    @property
    def paths(self) -> None:
        return None

    def __len__(self) -> int:
        return count_video_frames(self.path)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if stop is not None and i >= stop:
                        break
                    if i >= start:
                        yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise DataError(f"{self.path}: cannot decode video ({e})") from e
