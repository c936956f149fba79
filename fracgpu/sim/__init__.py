"""`fracgpu simulate`: the placement core without a cluster (trace replay, a snapshot's pending pods)."""
