"""Episode videos: frames upscaled for viewing, with a caption band above the picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def caption_layout(width: int) -> tuple[int, int]:
    """(font size, band height) in pixels for a frame ``width`` pixels wide (both grow with it)."""
    font = max(10, round(width / 24))
    return font, int(np.ceil(font * 1.6))


def caption_frame(frame: np.ndarray, text: str, *, min_size: int = 256) -> np.ndarray:
    """Upscale ``frame`` (nearest) to at least ``min_size`` px and put ``text`` in a band above it.

    The picture itself is not drawn on: rows ``band:band + H'`` and columns ``0:W'`` of the output
    are the upscaled frame (``band`` from :func:`caption_layout`), so nothing near its top edge is
    hidden.

    Args:
        frame: uint8 (H, W, 3).
        text: Caption (one line).
        min_size: Minimum side of the upscaled picture (small observation images are enlarged).

    Returns:
        uint8 (band + H', W'') padded with black to multiples of 16 (what mp4 encoders want).

    """
    from PIL import Image, ImageDraw, ImageFont

    frame = np.asarray(frame, np.uint8)
    scale = max(1, int(np.ceil(min_size / max(1, min(frame.shape[:2])))))
    img = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    font_size, band = caption_layout(img.shape[1])
    h, w = (band + img.shape[0] + 15) // 16 * 16, (img.shape[1] + 15) // 16 * 16
    canvas = np.zeros((h, w, 3), np.uint8)
    pil = Image.fromarray(canvas[:band])
    ImageDraw.Draw(pil).text((max(2, font_size // 3), (band - font_size) // 2), text, fill=(255, 255, 255),
                             font=ImageFont.load_default(size=font_size))
    canvas[:band] = np.asarray(pil)
    canvas[band : band + img.shape[0], : img.shape[1]] = img
    return canvas


def frame_caption(k: int, last: int, succeeded: bool, episode_success: bool) -> str:
    """Caption of frame ``k`` of ``last + 1``: success only once it has happened, failure on the last frame."""
    text = f"step {k}/{last}"
    if succeeded:
        return f"{text}  SUCCESS"
    if k == last and not episode_success:
        return f"{text}  failure"
    return text


def write_video(path: str | Path, frames: Sequence[tuple[np.ndarray, bool]], *, success: bool,
                fps: int = 20) -> Path:
    """Write an mp4 of ``frames`` (``(rgb uint8 (H, W, 3), succeeded so far)`` each), captioned per frame.

    Args:
        path: Output file (written to a temporary name, then renamed).
        frames: What :meth:`~lfm_policy.eval.wrappers.MultiStepWrapper.pop_frames` returns.
        success: The episode's outcome (a failed episode's last frame says so).
        fps: Frames per second.

    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    last = len(frames) - 1
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=16) as w:
            for k, (frame, succeeded) in enumerate(frames):
                w.append_data(caption_frame(frame, frame_caption(k, last, succeeded, success)))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
