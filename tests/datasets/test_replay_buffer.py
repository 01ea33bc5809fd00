import json
import logging
import os

import numpy as np
import pytest
import zarr
from crash_writer import run_until_killed, small_episode

from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.errors import DataError, LfmPolicyError


def _episodes(factory, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [factory(rng, n) for n in lengths]


def _assert_episode_equal(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_create_roundtrip_layout_and_attrs(tmp_path, episode_factory):
    path = tmp_path / "demo.zarr"
    eps = _episodes(episode_factory, [5, 9, 3])
    buf = ReplayBuffer.create(path, attrs={"task": "lift", "env_meta": {"env_name": "Lift"}})
    assert not path.exists()  # nothing at the final path before the first commit
    for i, ep in enumerate(eps):
        assert buf.add_episode(ep, episode_attrs={"seed": i}) == i
        assert path.exists()
    buf.attrs["seeds"] = [0, 1, 2]
    buf.close()
    assert not list(tmp_path.glob("*.tmp"))

    b = ReplayBuffer.open(path)
    assert b.n_episodes == 3 and b.n_steps == 17
    np.testing.assert_array_equal(b.episode_ends, [5, 14, 17])
    np.testing.assert_array_equal(b.episode_lengths, [5, 9, 3])
    assert b.keys == ["action", "camera", "state"]
    assert b.image_keys == ["camera"]
    assert b.attrs == {"task": "lift", "env_meta": {"env_name": "Lift"}, "seeds": [0, 1, 2]}
    for i, ep in enumerate(eps):
        _assert_episode_equal(b.get_episode(i), ep)
        assert b.get_episode_attrs(i) == {"seed": i}
    _assert_episode_equal(b.get_episode(-1), eps[-1])
    with pytest.raises(IndexError):
        b.get_episode(3)

    # Diffusion-Policy layout, zarr format 3, images chunked by a few frames, Blosc/zstd.
    g = zarr.open_group(str(path), mode="r")
    assert g.metadata.zarr_format == 3
    np.testing.assert_array_equal(g["meta/episode_ends"][:], [5, 14, 17])
    cam = g["data/camera"]
    assert cam.shape == (17, 8, 8, 3) and cam.dtype == np.uint8 and cam.chunks == (4, 8, 8, 3)
    codec = cam.compressors[0]
    assert type(codec).__name__ == "BloscCodec" and codec.cname.value == "zstd"
    assert json.loads((path / "zarr.json").read_text())["attributes"]["task"] == "lift"


def test_append_mode_and_read_only(tmp_path, episode_factory):
    path = tmp_path / "b.zarr"
    eps = _episodes(episode_factory, [4, 6, 7])
    with ReplayBuffer.create(path) as buf:
        buf.add_episode(eps[0])
    with ReplayBuffer.open(path, mode="a") as buf:
        buf.add_episode(eps[1])
        buf.add_episode(eps[2])
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 3
    _assert_episode_equal(b.get_episode(2), eps[2])
    with pytest.raises(LfmPolicyError, match="read-only"):
        b.add_episode(eps[0])
    with pytest.raises(LfmPolicyError, match="read-only"):
        b.attrs["x"] = 1
    assert "x" not in b.attrs
    with pytest.raises(LfmPolicyError, match="mode"):
        ReplayBuffer.open(path, mode="w")


def test_memory_buffer_and_copies(tmp_path, episode_factory):
    eps = _episodes(episode_factory, [3, 8, 2, 6])
    mem = ReplayBuffer.in_memory(attrs={"task": "t"})
    for ep in eps:
        mem.add_episode(ep, episode_attrs={"n": len(ep["action"])})
    assert mem.n_episodes == 4 and mem.n_steps == 19 and mem.path is None
    assert isinstance(mem.data["camera"], np.ndarray) and mem.data["camera"].shape == (19, 8, 8, 3)
    disk = mem.copy_to(tmp_path / "c.zarr")
    assert disk.attrs == {"task": "t"} and disk.get_episode_attrs(1) == {"n": 8}
    back = disk.copy_to_memory()
    for i, ep in enumerate(eps):
        _assert_episode_equal(back.get_episode(i), ep)
    np.testing.assert_array_equal(back.data["state"], np.concatenate([e["state"] for e in eps]))
    # float64 input is cast to the stored float32; the copy is independent of the disk buffer
    ep = dict(eps[0], action=eps[0]["action"].astype(np.float64))
    back.add_episode(ep)
    assert back.data["action"].dtype == np.float32 and back.n_episodes == 5 and disk.n_episodes == 4


def test_atomic_create_and_overwrite(tmp_path, episode_factory):
    path = tmp_path / "a.zarr"
    eps = _episodes(episode_factory, [3, 3])
    with pytest.raises(RuntimeError), ReplayBuffer.create(path, atomic=True) as buf:
        buf.add_episode(eps[0])
        assert not path.exists()
        raise RuntimeError("interrupted conversion")
    assert not path.exists() and not list(tmp_path.iterdir())

    with ReplayBuffer.create(path) as buf:
        buf.add_episode(eps[0])
    with pytest.raises(FileExistsError):
        ReplayBuffer.create(path)
    with ReplayBuffer.create(path, overwrite=True, attrs={"v": 2}) as buf:
        buf.add_episode(eps[1])
        buf.add_episode(eps[1])
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 2 and b.attrs == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]

    empty = tmp_path / "empty.zarr"
    ReplayBuffer.create(empty, attrs={"task": "x"}).close()  # an empty buffer is published on close
    assert ReplayBuffer.open(empty).n_episodes == 0


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ep: ep.pop("state"), "missing key 'state'"),
        (lambda ep: ep.update(extra=np.zeros((5, 1), np.float32)), "unexpected key 'extra'"),
        (lambda ep: ep.update(state=ep["state"][:4]), "key 'state' has length 4"),
        (lambda ep: ep["action"].__setitem__((2, 1), np.nan), "key 'action' contains NaN/Inf .*step 2"),
        (lambda ep: ep["action"].__setitem__((0, 0), np.inf), "key 'action' contains NaN/Inf"),
        (lambda ep: ep.update(camera=ep["camera"].astype(np.float32)), "key 'camera' has dtype float32"),
        (lambda ep: ep.update(action=ep["action"].astype(np.int64)), "key 'action' has dtype int64"),
        (lambda ep: ep.update(state=np.zeros((5, 5), np.float32)), "key 'state' has per-step shape"),
        (lambda ep: ep.update(state=np.array(["a"] * 5)), "key 'state' has unsupported dtype"),
    ],
)
def test_bad_episodes_are_rejected_without_changes(tmp_path, episode_factory, change, match):
    path = tmp_path / "bad.zarr"
    rng = np.random.default_rng(1)
    first = episode_factory(rng, 5)
    with ReplayBuffer.create(path) as buf:
        buf.add_episode(first)
        ep = episode_factory(rng, 5)
        change(ep)
        with pytest.raises(DataError, match=match) as info:
            buf.add_episode(ep)
        assert str(path) in str(info.value) and "episode 1" in str(info.value)
        assert buf.n_episodes == 1
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 1
    _assert_episode_equal(b.get_episode(0), first)


def test_bad_first_episode(tmp_path, episode_factory):
    path = tmp_path / "x.zarr"
    buf = ReplayBuffer.create(path)
    with pytest.raises(DataError, match="episode 0: key 'action' is empty"):
        buf.add_episode({"action": np.zeros((0, 2), np.float32)})
    with pytest.raises(DataError, match="no arrays"):
        buf.add_episode({})
    with pytest.raises(DataError, match="invalid key 'a/b'"):
        buf.add_episode({"a/b": np.zeros((2, 2))})
    with pytest.raises(DataError, match="chunks"):
        buf.add_episode({"a": np.zeros((2, 2))}, chunks={"a": (2,)})
    with pytest.raises(DataError, match="JSON"):
        buf.add_episode({"a": np.zeros((2, 2))}, episode_attrs={"x": object()})
    with pytest.raises(DataError, match="JSON"):
        buf.attrs["bad"] = np.float32(1)
    assert "bad" not in buf.attrs
    assert buf.n_episodes == 0
    buf.discard()
    assert not path.exists() and not list(tmp_path.iterdir())


def test_killed_writer_never_corrupts_committed_episodes(tmp_path, caplog):
    path = tmp_path / "crash.zarr"
    run_until_killed(path, "create", 3, 40_000, tmp_path)

    on_disk = zarr.open_group(str(path), mode="r")
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 3
    assert on_disk["data/camera"].shape[0] > b.n_steps  # the kill did land inside the big episode
    for i in range(3):
        _assert_episode_equal(b.get_episode(i), small_episode(i))
        assert b.get_episode_attrs(i) == {"seed": i}
    assert b.attrs == {"task": "crash"}

    with ReplayBuffer.open(path, mode="a") as buf:  # repairs, then appends cleanly
        assert buf.n_episodes == 3
        buf.add_episode(small_episode(3), episode_attrs={"seed": 3})
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 4 and b.n_steps == 5 + 6 + 7 + 8
    for i in range(4):
        _assert_episode_equal(b.get_episode(i), small_episode(i))
    assert not [f for _, _, fs in os.walk(path) for f in fs if f.endswith(".partial")]

    # A writer killed while creating a new buffer leaves nothing at the final path.
    fresh = tmp_path / "fresh.zarr"
    run_until_killed(fresh, "create", 0, 40_000, tmp_path)
    assert not fresh.exists()
    (left,) = tmp_path.glob("fresh.zarr.*.tmp")  # the dead writer's staging directory ...
    with caplog.at_level(logging.WARNING, logger="lfm_policy.datasets.staging"):
        ReplayBuffer.create(fresh).close()  # ... is removed by the next create of the same path
    assert not left.exists() and ReplayBuffer.open(fresh).n_episodes == 0
    assert f"removed a stale staging directory left by a writer that died: {left}" in caplog.text


def test_torn_commit_is_ignored_then_repaired(tmp_path, episode_factory):
    """The state a kill between growing meta/episode_ends and writing its value leaves behind."""
    path = tmp_path / "t.zarr"
    eps = _episodes(episode_factory, [4, 5, 6])
    with ReplayBuffer.create(path) as buf:
        for ep in eps[:2]:
            buf.add_episode(ep)
    g = zarr.open_group(str(path), mode="r+")
    for _key, arr in g["data"].arrays():
        arr.resize((arr.shape[0] + 6, *arr.shape[1:]))
        arr[-6:] = 1  # rows of the uncommitted episode
    g["meta/episode_ends"].resize((3,))  # value not written: reads as the fill value 0
    b = ReplayBuffer.open(path)
    assert b.n_episodes == 2 and b.n_steps == 9
    with ReplayBuffer.open(path, mode="a") as buf:
        assert buf.data["state"].shape[0] == 9  # uncommitted rows trimmed
        buf.add_episode(eps[2])
    b = ReplayBuffer.open(path)
    np.testing.assert_array_equal(b.episode_ends, [4, 9, 15])
    for i, ep in enumerate(eps):
        _assert_episode_equal(b.get_episode(i), ep)


def test_corrupt_or_foreign_stores(tmp_path, episode_factory):
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain"):
        ReplayBuffer.open(tmp_path / "plain")
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    with pytest.raises(DataError, match="junk.zarr: not a readable zarr"):
        ReplayBuffer.open(junk)
    g = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w")
    g.require_group("data")
    with pytest.raises(DataError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "nometa.zarr")

    path = tmp_path / "c.zarr"
    with ReplayBuffer.create(path) as buf:
        for ep in _episodes(episode_factory, [8, 8, 8]):
            buf.add_episode(ep)
    g = zarr.open_group(str(path), mode="r+")
    g["meta/episode_ends"][1] = 30  # beyond the data
    with pytest.raises(DataError, match="c.zarr: key 'data/action' has 24 steps"):
        ReplayBuffer.open(path)
    g["meta/episode_ends"][1] = 2  # not increasing
    with pytest.raises(DataError, match="not increasing at episode 1"):
        ReplayBuffer.open(path)
    g["meta/episode_ends"][1] = 16
    chunk = path / "data" / "camera" / "c" / "2" / "0" / "0" / "0"  # frames 8..11 = episode 1
    chunk.write_bytes(chunk.read_bytes()[:10])
    b = ReplayBuffer.open(path)
    _ = b.get_episode(0)
    with pytest.raises(DataError, match=r"c.zarr: episode 1: key 'camera': chunk data/camera/c/2/0/0/0 \(steps 8-11\)"):
        b.get_episode(1)
    with pytest.raises(DataError, match="key 'camera': chunk data/camera/c/2/0/0/0"):
        b.copy_to_memory()
