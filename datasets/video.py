"""Render one episode as a video: camera frames side by side above a plot of the actions over time.

The action plot is drawn once with matplotlib (Agg, no display needed) and a cursor marks the current
step on every frame. Episodes without cameras give the plot alone. Output is mp4 (ffmpeg through
imageio) or gif, written to a temporary file and renamed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lfm_policy.errors import DataError

PLOT_HEIGHT = 220
MIN_WIDTH = 480
CAMERA_MIN_HEIGHT = 160
FORMATS = (".mp4", ".gif")


def episode_frames(source: Any, episode: int, *, image_keys: Sequence[str] | None = None,
                   action_key: str | None = None) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames for each step of ``episode``.

    Args:
        source: A ``ReplayBuffer`` or ``RobomimicFile``.
        episode: Episode index (numeric demo order for robomimic files).
        image_keys: Cameras to show (default: every uint8 (T, H, W, C) key).
        action_key: Key plotted over time (default: ``action`` / ``actions``, or the buffer schema's).

    Raises:
        IndexError: ``episode`` out of range.
        DataError: Unknown key, or an action key that is not (T, Da).

    """
    image_keys = list(source.image_keys if image_keys is None else image_keys)
    action_key = action_key or _default_action_key(source)
    ep = source.get_episode(episode, [*image_keys, action_key])
    actions = np.asarray(ep[action_key], dtype=np.float64)
    if actions.ndim == 1:
        actions = actions[:, None]
    if actions.ndim != 2:
        raise DataError(f"{source.where}: episode {episode}: key {action_key!r} must be (T, Da) to plot, "
                        f"got shape {actions.shape}")
    cams = [_upscale(ep[k], CAMERA_MIN_HEIGHT) for k in image_keys]
    cam_h = max((c.shape[1] for c in cams), default=0)
    cam_w = sum(c.shape[2] for c in cams)
    width = max(MIN_WIDTH, cam_w)
    title = f"episode {episode}: {len(actions)} steps, {action_key!r} over time"
    plot, cursor_x, rows = _plot_strip(actions, width, title)
    for t in range(len(actions)):
        frame = np.full((cam_h + plot.shape[0], width, 3), 255, dtype=np.uint8)
        x = (width - cam_w) // 2
        for cam in cams:
            img = cam[t]
            frame[:img.shape[0], x:x + img.shape[1]] = img[..., :3] if img.shape[-1] >= 3 else img
            x += img.shape[1]
        strip = plot.copy()
        cx = cursor_x[t]
        strip[rows[0]:rows[1], max(cx - 1, 0):cx + 1] = (220, 30, 30)
        frame[cam_h:] = strip
        yield _pad_to_multiple(frame, 16)


def write_episode_video(source: Any, episode: int, out: str | os.PathLike, *, fps: float = 10.0,
                        image_keys: Sequence[str] | None = None, action_key: str | None = None) -> Path:
    """Write :func:`episode_frames` to ``out`` (``.mp4`` or ``.gif``) atomically; return the path."""
    out = Path(out)
    ext = out.suffix.lower()
    if ext not in FORMATS:
        raise DataError(f"{out}: unsupported video format {ext!r}; use one of {FORMATS}")
    if fps <= 0:
        raise DataError(f"{out}: fps must be positive, got {fps}")
    frames = np.stack(list(episode_frames(source, episode, image_keys=image_keys, action_key=action_key)))
    import imageio.v3 as iio

    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")  # encoders pick the format by suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if ext == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, extension=".mp4", fps=fps)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _default_action_key(source: Any) -> str:
    attrs = getattr(source, "attrs", None) or {}
    schema = attrs.get("schema") if isinstance(attrs, dict) else None
    if isinstance(schema, dict) and schema.get("action_key"):
        return schema["action_key"]
    return getattr(source, "action_key", "action")


def _upscale(frames: np.ndarray, min_height: int) -> np.ndarray:
    """Nearest-neighbour upscale (T, H, W, C) by the integer factor that reaches ``min_height``."""
    factor = max(1, -(-min_height // frames.shape[1]))
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def _plot_strip(actions: np.ndarray, width: int, title: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Render the action plot; return (image (PLOT_HEIGHT, width, 3), cursor column per step, axes rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, PLOT_HEIGHT / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.16, 0.78, 0.7))
    t = np.arange(len(actions))
    for d in range(actions.shape[1]):
        ax.plot(t, actions[:, d], lw=1.2, label=f"a[{d}]")
    ax.set_xlim(0, max(len(actions) - 1, 1))
    ax.set_xlabel("step", fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if actions.shape[1] <= 12:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    height = image.shape[0]
    xs = ax.transData.transform(np.stack([t, np.zeros_like(t)], 1).astype(np.float64))[:, 0]
    bbox = ax.get_window_extent()
    rows = (int(height - bbox.y1), int(height - bbox.y0))
    return image, np.clip(np.round(xs).astype(int), 0, image.shape[1] - 1), rows


def _pad_to_multiple(frame: np.ndarray, m: int) -> np.ndarray:
    """Pad with white so height and width are multiples of ``m`` (what video encoders want)."""
    h, w = frame.shape[:2]
    ph, pw = -h % m, -w % m
    if not ph and not pw:
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=255)
