"""`fracgpu controller`: GPU health self-heal. Evicts the pods on unhealthy GPUs, taints broken nodes,
removes the taint when they recover, reports plugins that stop heartbeating. Leader-elected.

``reconcile`` (pure decisions), ``views`` (API dicts -> values), ``leader`` (Lease election),
``loop`` (the thin I/O shell), ``metrics``, ``main`` (flags, wiring).
"""
