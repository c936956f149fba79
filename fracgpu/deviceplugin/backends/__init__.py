"""GPU backends behind one narrow interface (``base.GpuBackend``): NVML and a simulated one."""

from __future__ import annotations

from fracgpu.deviceplugin.backends.base import GpuBackend


def open_backend(kind: str, gpus_file: str | None, node: str) -> GpuBackend:
    """The backend a node program (device plugin, DRA driver) asked for; ValueError says what is missing.
    Simulated GPUs without a pinned uuid get one derived from ``node``, the same in both programs."""
    if kind == "simulated":
        if not gpus_file:
            raise ValueError("--backend simulated needs --gpus FILE (or FRACGPU_GPUS_FILE)")
        from fracgpu.deviceplugin.backends.simulated import SimulatedBackend

        return SimulatedBackend.from_file(gpus_file, node=node)
    import pynvml

    from fracgpu.deviceplugin.backends.nvml import NvmlBackend

    return NvmlBackend(pynvml)
