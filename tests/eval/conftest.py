import pytest
from eval_helpers import tiny_train_config

from lfm_policy.cli import main as cli_main
from lfm_policy.train import train


@pytest.fixture(scope="session")
def toy_zarr_eval(tmp_path_factory):
    """20 expert episodes of the toy task (low-dim), collected once per session."""
    path = tmp_path_factory.mktemp("toy_eval") / "toy.zarr"
    assert cli_main(["collect", "--task", "toy/point-obstacle", "--episodes", "20", "--out", str(path),
                     "--seed", "0", "--no-progress"]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(toy_zarr_eval, tmp_path_factory):
    """Path of a tiny trained toy checkpoint."""
    out = tmp_path_factory.mktemp("tiny_run")
    return train(tiny_train_config(toy_zarr_eval, out), progress=False)
