"""mp4 output of rollouts (imageio's ffmpeg plugin)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def write_mp4(path: str | Path, episodes: Sequence[Sequence[np.ndarray]], fps: int) -> Path:
    """Write the episodes' frames one after another, each followed by a short black pause."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as out:
        for frames in episodes:
            for frame in frames:
                out.append_data(frame)
            if frames:
                for _ in range(max(1, fps // 2)):
                    out.append_data(np.zeros_like(frames[-1]))
    tmp.replace(path)
    return path
