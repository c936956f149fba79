"""`fracgpu dra-driver`: fracgpu's GPUs through Dynamic Resource Allocation (resource.k8s.io/v1), docs/dra.md.

The DaemonSet on a node that opted into the DRA path publishes the node's GPUs as ResourceSlices and serves
the kubelet's DRA plugin API: registration on the plugins_registry socket, NodePrepareResources /
NodeUnprepareResources on its own socket, CDI spec files with the same env and limits as the device plugin.
"""
