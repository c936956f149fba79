"""`fracgpu controller`: GPU health self-heal. Evicts the pods on unhealthy GPUs, taints broken nodes,
removes the taint when they recover, reports plugins that stop heartbeating, optionally starts a
recovery Job. Leader-elected. See docs/health.md.

``reconcile`` (pure decisions), ``views`` (API dicts -> values), ``recovery`` (Job template, pure),
``leader`` (Lease election), ``loop`` (cache + the thin I/O shell), ``writer`` (writes over
``fracgpu.kube``), ``metrics``, ``main`` (flags, wiring).
"""
