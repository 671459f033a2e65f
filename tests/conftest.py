import os
import signal

import pytest
import torch

# Without a GPU, Triton kernels (model/kernels) run in Triton's interpreter on CPU tensors. The flag
# is read when a kernel is defined, so it must be set before any test imports model.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A shell starts a background job (`make test &`, nohup) with Ctrl-C ignored, and the processes that
# tests start would inherit that: Python does not turn SIGINT into KeyboardInterrupt where it starts
# ignored, so every Ctrl-C test failed. A handler (unlike "ignore") is not inherited across exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: intra-op threads only add sync cost, and under `pytest -n 2` on a 2-core
    machine they spin against the other worker. Subprocesses that tests start set OMP_NUM_THREADS=1."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def default_float32_matmuls():
    """Every test starts with torch's default float32 matmuls ("highest": no TF32) and leaves them so.
    The Trainer turns TF32 on until its close(); a test that fails before closing one would otherwise
    pass TF32 on to the tests after it, such as the GPU tests comparing CUDA with the CPU."""
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision("highest")
