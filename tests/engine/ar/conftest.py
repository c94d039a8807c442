"""One torch thread for these tests' tiny models (many small ops: a second thread only adds
synchronisation, and on a loaded machine waits of seconds a test)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
