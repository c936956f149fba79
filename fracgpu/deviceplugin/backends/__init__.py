"""GPU backends behind one narrow interface (``base.GpuBackend``): NVML and a simulated one."""
