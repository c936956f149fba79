"""`fracgpu inspect`: GPUs, shares and tenants of a live cluster or a snapshot file.

``view`` (a snapshot read into the placement core's picture: per-GPU use, tenants, quota queues; shared with
`fracgpu simulate --snapshot`), ``main`` (flags, the one-time live read, output).
"""
