"""`fracgpu device-plugin`: serves fracgpu.io/vgpu-core to the kubelet (device-plugin API v1beta1).

Layout: ``backends/`` (GPUs: NVML or a YAML file), ``ledger`` (which pod holds which device IDs;
pure), ``servicer`` (the DevicePlugin gRPC methods), ``server`` (socket, registration,
re-registration), ``podresources`` (the kubelet's PodResources List), ``apiserver`` and ``kubeapiserver`` (the narrow
Kubernetes side), ``metrics`` and ``main``.
"""
