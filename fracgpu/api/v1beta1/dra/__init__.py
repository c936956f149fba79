"""The DRA path's contracts: resource.k8s.io/v1 objects, the kubelet's DRA and plugin-registration gRPC APIs.

- ``resource``: the parts of ResourceSlice, DeviceClass and ResourceClaim that fracgpu writes or reads,
  as typed dataclasses with their JSON form (field names of k8s.io/api/resource/v1/types.go);
- ``checkpoint``: the driver's record of prepared claims (its own file format);
- ``kubeletv1`` / ``kubeletv1beta1``: generated code of the kubelet's ``DRAPlugin`` gRPC service;
- ``fracgpu.api.v1beta1.pluginregistration``: generated code of the kubelet's plugin registration API.

Upstream sources relied on are listed in docs/dra.md ("Upstream facts relied on").
"""
