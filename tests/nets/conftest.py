import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each nets test on one intra-op thread, then restore the setting.

    The nets here are tiny: two OpenMP threads gain nothing on them, and when the 2-core machine is
    shared (pytest-xdist, other jobs) spinning threads slow small-op loops down by 10-40x (measured:
    30 training steps of a tiny UNet took 52 s with 2 threads under load, 1.5 s with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
