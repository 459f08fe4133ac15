import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny tensors gain nothing from two, and on a loaded
    2-core machine two threads spin more than they compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
