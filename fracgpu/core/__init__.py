"""The pure core of fracgpu: quantities, GPU inventory, requests, fit, placement, quotas, fragmentation.

No I/O here: no network, files, clocks, environment or logging. Functions are purely
data-manipulative and computational; the clock is passed in. Both programs import this package;
import-linter keeps grpc, aiohttp, kubernetes and pynvml out of it, even indirectly.
"""
