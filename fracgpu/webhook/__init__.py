"""Mutating admission webhook: sends GPU pods to fracgpu-scheduler and refuses malformed GPU requests.

`admission` is the decision over one AdmissionReview (no I/O); `app` the aiohttp adapter; `main` the
command line and the TLS server.
"""
