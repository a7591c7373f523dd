"""glibc malloc tuning for the training / extraction processes."""
import platform

import numpy as np
import pytest

from workflow_lib.common.cpu_process import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings_and_allocation_still_works():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    for _ in range(3):  # big buffers come from the heap now and must still be usable after reuse
        x = np.ones(8 * 1024 * 1024, dtype=np.float32)
        assert float(x.sum()) == 8 * 1024 * 1024
        del x
