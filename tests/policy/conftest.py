import pytest

from lfm_policy.cli import main as cli_main


@pytest.fixture(scope="session")
def toy_zarr(tmp_path_factory):
    """40 expert episodes of the toy task (low-dim), collected once per session."""
    path = tmp_path_factory.mktemp("toy") / "toy.zarr"
    assert cli_main(["collect", "--task", "toy/point-obstacle", "--episodes", "40", "--out", str(path),
                     "--seed", "0"]) == 0
    return path
