"""train/metrics.py: the peak-FLOPs table that MFU divides by."""

from __future__ import annotations

import pytest

from train.metrics import peak_flops_of


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989),
    ("NVIDIA H200 NVL", 835),  # was rated as an SXM H200 (989)
    ("NVIDIA GH200 480GB", 989),
    ("NVIDIA H800 PCIe", 756),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A10", 125),
    ("NVIDIA A10G", 70),
    ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362),
])
def test_a_variant_gets_its_own_peak_not_its_familys(name, tflops):
    assert peak_flops_of(name) == tflops * 1e12


def test_an_unknown_card_has_no_peak():
    assert peak_flops_of("NVIDIA GeForce GTX 1080") is None
