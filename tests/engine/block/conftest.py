import pytest

from tests import torch_threads

one_torch_thread = pytest.fixture(autouse=True)(torch_threads.one_torch_thread)
