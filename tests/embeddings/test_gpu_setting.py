"""RECSYS_USE_GPU: auto lets implicit decide, false keeps the CPU, true without CUDA fails loudly."""

from __future__ import annotations

from typing import Any

import pytest

from embeddings import services
from embeddings.learners import cuda_available


def test_auto_lets_implicit_decide_and_false_keeps_the_cpu(settings: Any) -> None:
    settings.RECSYS_USE_GPU = "auto"
    assert services.use_gpu_setting() is None
    settings.RECSYS_USE_GPU = "false"
    assert services.use_gpu_setting() is False


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: true is honoured")
def test_true_without_cuda_refuses_to_train_on_the_cpu_silently(settings: Any) -> None:
    settings.RECSYS_USE_GPU = "true"
    with pytest.raises(RuntimeError, match="RECSYS_USE_GPU=true"):
        services.use_gpu_setting()
