"""`fracgpu simulate` and `fracgpu inspect`: the placement core without a cluster (trace replay, snapshots)."""
