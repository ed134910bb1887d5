"""The monitors' tests run thousands of tiny matrix products: one BLAS thread is fastest (more threads mostly
wait for each other on a small CPU), as one torch thread is for the tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield
