"""Camera streams of LeRobot folders: decode a time window of an MP4 and encode frames, with PyAV.

LeRobot stores each camera as MP4 (AV1, ``yuv420p``, by default). Format v3.0 concatenates many
episodes into one file and records each episode's ``[from_timestamp, to_timestamp)``; v2.1 writes one
file per episode starting at 0. Frames come back as ``uint8`` (T, H, W, 3), RGB, as every other image
key of a replay buffer. PyAV ships its own FFmpeg (``libdav1d`` decodes AV1, ``libsvtav1`` encodes it),
so nothing needs a system ffmpeg.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from lfm_policy.errors import DataError


def decode_window(path: str | os.PathLike, start_s: float, n_frames: int, fps: float, *, where: str = "") -> np.ndarray:
    """The ``n_frames`` frames of ``path`` from time ``start_s`` on, as uint8 (n, H, W, 3).

    Seeks to the keyframe before ``start_s`` and decodes forward; a frame belongs to the window when its
    presentation time is at least ``start_s - 0.5 / fps`` (half a frame of tolerance for rounded
    timestamps).

    Raises:
        DataError: The file is missing, unreadable or has no video stream, or it ends before
            ``n_frames`` frames (a truncated file), naming ``where`` (episode and key).

    """
    import av
    from av.video.reformatter import VideoReformatter

    label = f"{path}" + (f" ({where})" if where else "")
    if not Path(path).is_file():
        raise DataError(f"{label}: video file missing")
    out: list[np.ndarray] = []
    lo = start_s - 0.5 / fps
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{label}: no video stream")
            stream = container.streams.video[0]
            rgb = VideoReformatter()  # one swscale context for every frame (frame.to_ndarray makes one each)
            if start_s > 0 and stream.time_base is not None:
                container.seek(max(0, int(lo / stream.time_base)), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else float(frame.pts * stream.time_base)
                if t < lo:
                    continue
                out.append(rgb.reformat(frame, format="rgb24").to_ndarray())
                if len(out) == n_frames:
                    break
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001  (PyAV raises its own error types for damaged files)
        raise DataError(f"{label}: cannot decode: {type(e).__name__}: {e}") from None
    if len(out) < n_frames:
        raise DataError(f"{label}: expected {n_frames} frames from t={start_s:.4f} s, the file has {len(out)} "
                        "(truncated video?)")
    return np.stack(out)


def video_stream_info(path: str | os.PathLike) -> dict:
    """Codec, decoder, pixel format, size, frame rate and frame count of the file's first video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            s = container.streams.video[0]
            return {"codec": s.codec_context.codec.canonical_name, "decoder": s.codec_context.name,
                    "pix_fmt": s.codec_context.pix_fmt, "height": s.height,
                    "width": s.width, "fps": float(s.average_rate or s.base_rate or 0), "frames": int(s.frames)}
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the video stream: {type(e).__name__}: {e}") from None


def encode_video(frames: np.ndarray, path: str | os.PathLike, fps: int, *, codec: str = "libsvtav1",
                 crf: int = 30, gop: int = 2) -> None:
    """Write uint8 (T, H, W, 3) frames as MP4 (``yuv420p``), LeRobot's default settings.

    ``gop`` 2 (a keyframe every other frame) and CRF 30 are what LeRobot's writer uses, so that random
    access stays cheap. Odd sizes are rejected (4:2:0 needs even ones; padding would hand a reader
    another shape back).

    Raises:
        DataError: Frames that are not uint8 (T, H, W, 3) with even H and W.

    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise DataError(f"{path}: {w}x{h} frames: yuv420p video needs an even width and height")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise (1: errors)
    options = {"g": str(gop), "crf": str(crf)}
    if codec == "libsvtav1":
        options["preset"] = "12"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
