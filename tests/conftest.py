import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: intra-op threads only add sync cost, and under `pytest -n 2` on a 2-core
    machine they spin against the other worker. Subprocesses that tests start set OMP_NUM_THREADS=1."""
    torch.set_num_threads(1)
