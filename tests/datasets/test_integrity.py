"""Format-2 integrity: missing and corrupt chunks are named on open and on every read path; format 1 still reads."""

import json
import shutil

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from lfm_policy.cli import main
from lfm_policy.datasets.buffer_backends import default_chunks
from lfm_policy.datasets.integrity import check_store, rewrite_store
from lfm_policy.datasets.replay_buffer import ReplayBuffer
from lfm_policy.datasets.robomimic_convert import export_robomimic
from lfm_policy.datasets.stats import compute_stats
from lfm_policy.datasets.torch_dataset import SequenceDataset
from lfm_policy.errors import DataError

LENGTHS = (6, 6, 6, 6, 6)  # 30 steps
CHUNKS = {"action": (4, 3), "state": (16, 4), "camera": (4, 8, 8, 3)}


def _episodes(factory, seed=0):
    rng = np.random.default_rng(seed)
    eps = [factory(rng, n) for n in LENGTHS]
    for ep in eps:
        ep["done"] = np.zeros(len(ep["action"]), dtype=bool)  # all zeros: format 2 stores its chunk anyway
    return eps


def _write_v2(path, factory, *, final=True):
    eps = _episodes(factory)
    with ReplayBuffer.create(path, attrs={"task": "t"}, atomic=True) as buf:
        for i, ep in enumerate(eps):
            buf.add_episode(ep, final_obs={"state": ep["state"][-1] + 1} if final else None,
                            chunks=CHUNKS if i == 0 else None, episode_attrs={"seed": i})
    return eps


def _write_v1(path, eps, attrs=None):
    """A store written the way format 1 did: Blosc only, default write_empty_chunks (all-zero chunks skipped)."""
    g = zarr.open_group(str(path), mode="w-", zarr_format=3)
    g.attrs.put({**(attrs or {}), "lfm_policy_format": {"name": "lfm_policy.replay_buffer", "version": 1}})
    g.require_group("data")
    g.require_group("meta/episode_attrs")
    ends = np.cumsum([len(e["action"]) for e in eps]).astype(np.int64)
    e = g.create_array("meta/episode_ends", shape=ends.shape, chunks=(4096,), dtype="int64", fill_value=0,
                       compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    e[:] = ends
    for key in eps[0]:
        arr = np.concatenate([ep[key] for ep in eps])
        shuffle = "bitshuffle" if arr.dtype.itemsize == 1 else "shuffle"
        a = g.create_array(f"data/{key}", shape=arr.shape, dtype=arr.dtype, chunks=default_chunks(arr.shape, arr.dtype),
                           fill_value=0, compressors=BloscCodec(cname="zstd", clevel=3, shuffle=shuffle))
        a[:] = arr
    for i in range(len(eps)):
        g.create_group(f"meta/episode_attrs/{i}", attributes={"seed": i})


def _flip_middle(chunk):
    raw = bytearray(chunk.read_bytes())
    mid = len(raw) // 2
    raw[mid - 32:mid + 32] = bytes(b ^ 0x5A for b in raw[mid - 32:mid + 32])
    chunk.write_bytes(bytes(raw))


def _cli_error(capsys, argv, *needles):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("key, chunk, match", [
    ("action", "data/action/c/3/0", r"key 'action': chunk data/action/c/3/0 \(steps 12-15\) is missing"),
    ("state", "data/state/c/1/0", r"key 'state': chunk data/state/c/1/0 \(steps 16-29\) is missing"),
    ("camera", "data/camera/c/7/0/0/0", r"key 'camera': chunk data/camera/c/7/0/0/0 \(steps 28-29\) is missing"),
    ("meta/episode_ends", "meta/episode_ends/c/0",
     r"key 'meta/episode_ends': chunk meta/episode_ends/c/0 \(episodes 0-4\) is missing"),
    ("meta/final_obs/state", "meta/final_obs/state/c/0/0",
     r"key 'meta/final_obs/state': chunk meta/final_obs/state/c/0/0 \(episodes 0-4\) is missing"),
])
def test_a_missing_chunk_is_named_when_the_store_is_opened(tmp_path, episode_factory, capsys, key, chunk, match):
    path = tmp_path / "d.zarr"
    _write_v2(path, episode_factory)
    (path / chunk).unlink()
    for mode in ("r", "a"):
        with pytest.raises(DataError, match=match) as info:
            ReplayBuffer.open(path, mode)
        assert str(path) in str(info.value) and "damaged" in str(info.value)
    with pytest.raises(DataError, match=match):
        SequenceDataset(path, obs_keys=["state"], n_obs_steps=1, horizon=2, n_action_steps=1)
    _cli_error(capsys, ["data", "info", str(path)], str(path), chunk)
    with pytest.raises(DataError, match=match):
        rewrite_store(path, tmp_path / "x.zarr", missing_as_zero=True)  # format 2: a missing chunk is damage
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert chunk in out and "is missing" in out


def test_corrupt_chunk_contents_are_named_on_every_read_path(tmp_path, episode_factory, capsys):
    path = tmp_path / "d.zarr"
    _write_v2(path, episode_factory)
    _flip_middle(path / "data/state/c/1/0")  # steps 16-29: episodes 2 (partly), 3, 4
    _flip_middle(path / "data/camera/c/0/0/0/0")  # steps 0-3: episode 0
    buf = ReplayBuffer.open(path)  # opening reads no data chunk
    np.testing.assert_array_equal(buf.get_episode(1, ["state", "action"])["action"].shape, (6, 3))
    state = r"key 'state': chunk data/state/c/1/0 \(steps 16-29\) is corrupt: its checksum does not match"
    with pytest.raises(DataError, match=rf"d.zarr: episode 3: {state}"):
        buf.get_episode(3)
    with pytest.raises(DataError, match=r"episode 0: key 'camera': chunk data/camera/c/0/0/0/0 \(steps 0-3\)"):
        buf.get_episode(0)
    for read in (lambda: buf.copy_to_memory(["action", "state"]),
                 lambda: compute_stats(buf, ["state"])):
        with pytest.raises(DataError, match=state):
            read()
    any_key = r"d.zarr: (episode 0: )?key 'camera': chunk data/camera/c/0/0/0/0 \(steps 0-3\) is corrupt"
    for read in (lambda: export_robomimic(path, tmp_path / "o.hdf5"), lambda: buf.copy_to(tmp_path / "copy.zarr"),
                 lambda: compute_stats(buf),
                 lambda: SequenceDataset(path, obs_keys=["state"], n_obs_steps=1, horizon=2, n_action_steps=1)):
        with pytest.raises(DataError, match=any_key):
            read()
    # windows read straight from disk fail as clearly
    ds = SequenceDataset(path, obs_keys=["state"], n_obs_steps=1, horizon=2, n_action_steps=1, in_memory=False)
    _ = ds[0]
    with pytest.raises(DataError, match=state):
        ds[len(ds) - 1]
    assert not (tmp_path / "o.hdf5").exists() and not (tmp_path / "copy.zarr").exists()
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "data/state/c/1/0 (steps 16-29) is corrupt" in out
    assert "data/camera/c/0/0/0/0 (steps 0-3) is corrupt" in out
    _cli_error(capsys, ["data", "info", str(path)], "data/camera/c/0/0/0/0")


def test_data_check_reports_every_problem_and_ok(tmp_path, episode_factory, capsys):
    path = tmp_path / "d.zarr"
    _write_v2(path, episode_factory)
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format 2 (checksummed), 5 episodes, 30 steps" in out and out.strip().endswith("OK")
    report = check_store(path)
    # every chunk of every array: episode_ends 1, action 8, state 2, camera 8, done 1, final obs 1
    assert report.ok and report.chunks_checked == 21
    (path / "data/action/c/0/0").unlink()
    (path / "data/action/c/5/0").unlink()
    _flip_middle(path / "data/camera/c/4/0/0/0")
    assert main(["data", "check", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and len(report["problems"]) == 3
    assert sorted(report["problems"])[0].startswith("key 'action': chunk data/action/c/0/0 (steps 0-3) is missing")
    assert any("data/action/c/5/0 (steps 20-23) is missing" in p for p in report["problems"])
    assert any("data/camera/c/4/0/0/0 (steps 16-19) is corrupt" in p for p in report["problems"])


def test_rows_past_the_last_commit_may_be_missing(tmp_path, episode_factory):
    """A writer killed after growing the arrays but before writing their chunks leaves them missing: fine."""
    path = tmp_path / "d.zarr"
    eps = _write_v2(path, episode_factory)
    g = zarr.open_group(str(path), mode="r+")
    for _key, arr in g["data"].arrays():
        arr.resize((arr.shape[0] + 40, *arr.shape[1:]))  # chunks of rows 30..69 never written
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes == 5 and check_store(path).ok
    with ReplayBuffer.open(path, "a") as buf:
        buf.add_episode(eps[0], final_obs={"state": eps[0]["state"][0]})
    buf = ReplayBuffer.open(path)
    assert buf.n_steps == 36 and check_store(path).ok
    np.testing.assert_array_equal(buf.get_episode(5)["camera"], eps[0]["camera"])


def test_all_zero_chunks_are_stored_in_format_2(tmp_path, episode_factory):
    path = tmp_path / "d.zarr"
    _write_v2(path, episode_factory)
    buf = ReplayBuffer.open(path)
    assert buf.format_version == 2 and buf.checksummed
    assert (path / "data/done/c/0").is_file()
    g = zarr.open_group(str(path), mode="r")
    for _key, arr in g["data"].arrays():
        assert arr.nchunks_initialized == arr.nchunks
        assert type(arr.compressors[-1]).__name__ == "Crc32cCodec"
    assert json.loads((path / "zarr.json").read_text())["attributes"]["lfm_policy_format"]["version"] == 2


def test_format_1_stores_open_read_and_rewrite(tmp_path, episode_factory, capsys):
    eps = _episodes(episode_factory)
    for ep in eps:
        del ep["done"]
    v1 = tmp_path / "old.zarr"
    _write_v1(v1, eps, attrs={"task": "old", "env_meta": {"env_name": "Toy"}})
    buf = ReplayBuffer.open(v1)
    assert buf.format_version == 1 and not buf.checksummed and buf.n_episodes == 5
    for i, ep in enumerate(eps):
        for k in ep:
            np.testing.assert_array_equal(buf.get_episode(i)[k], ep[k])
    assert main(["data", "info", str(v1), "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert f"format 1: no checksums; re-write it as format 2 with `lfm-policy data rewrite {v1} " in out
    assert main(["data", "check", str(v1)]) == 0
    assert "no checksums: contents cannot be verified" in capsys.readouterr().out
    with pytest.raises(DataError, match="final observations need a format-2 store"):
        ReplayBuffer.open(v1, "a").add_episode(eps[0], final_obs={"state": eps[0]["state"][0]})

    new = tmp_path / "new.zarr"
    assert main(["data", "rewrite", str(v1), str(new)]) == 0
    out_buf = ReplayBuffer.open(new)
    assert out_buf.format_version == 2 and out_buf.checksummed and check_store(new).ok
    assert out_buf.attrs == buf.attrs and out_buf.keys == buf.keys
    for k in buf.keys:
        assert out_buf.chunks(k) == buf.chunks(k) and out_buf.key_spec(k) == buf.key_spec(k)
        np.testing.assert_array_equal(out_buf.copy_to_memory().data[k], buf.copy_to_memory().data[k])
    assert [out_buf.get_episode_attrs(i) for i in range(5)] == [{"seed": i} for i in range(5)]
    assert main(["data", "rewrite", str(v1), str(new)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_format_1_all_zero_chunks_need_missing_as_zero(tmp_path, episode_factory, capsys):
    eps = _episodes(episode_factory)  # 'done' is all zeros: format 1 never stored its chunk
    v1 = tmp_path / "old.zarr"
    _write_v1(v1, eps)
    assert not (v1 / "data/done/c/0").exists()
    hint = f"lfm-policy data rewrite {v1} {tmp_path / 'old-v2.zarr'} --missing-as-zero"
    with pytest.raises(DataError, match="key 'done': chunk data/done/c/0 \\(steps 0-29\\) is missing") as info:
        ReplayBuffer.open(v1)
    assert "stores written before format 2 skipped chunks that held only zeros" in str(info.value)
    assert hint in str(info.value)
    assert main(["data", "check", str(v1)]) == 1
    assert hint in capsys.readouterr().out
    _cli_error(capsys, ["data", "rewrite", str(v1), str(tmp_path / "old-v2.zarr")], "--missing-as-zero")
    assert main(["data", "rewrite", str(v1), str(tmp_path / "old-v2.zarr"), "--missing-as-zero"]) == 0
    new = ReplayBuffer.open(tmp_path / "old-v2.zarr")
    np.testing.assert_array_equal(new.copy_to_memory().data["done"], np.zeros(30, bool))
    np.testing.assert_array_equal(new.get_episode(2)["camera"], eps[2]["camera"])
    assert (tmp_path / "old-v2.zarr/data/done/c/0").is_file()


def test_rewrite_in_place_keeps_final_obs(tmp_path, episode_factory):
    path = tmp_path / "d.zarr"
    eps = _write_v2(path, episode_factory)
    before = {k: v.copy() for k, v in ReplayBuffer.open(path).copy_to_memory().data.items()}
    rewrite_store(path, path, overwrite=True)
    buf = ReplayBuffer.open(path)
    assert buf.final_obs_keys == ["state"] and buf.attrs == {"task": "t"}
    for i, ep in enumerate(eps):
        np.testing.assert_array_equal(buf.get_final_obs(i)["state"], ep["state"][-1] + 1)
    for k, v in before.items():
        np.testing.assert_array_equal(buf.copy_to_memory().data[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]
    shutil.rmtree(path)
