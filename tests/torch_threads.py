"""One torch thread for tests of tiny models (many small ops: a second thread only adds synchronisation, and
on a loaded machine waits of seconds a test). A conftest makes it autouse for its folder:
``one_torch_thread = pytest.fixture(autouse=True)(torch_threads.one_torch_thread)``."""

from typing import Iterator

import torch


def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
