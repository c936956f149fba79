"""fracgpu.io/v1beta1: names, annotation formats, CRD types and wire types.

The generated gRPC code lives in ``deviceplugin`` and ``podresources`` below; this package does
not import them, so that the pure core can import ``fracgpu.api.v1beta1`` without reaching grpc.
"""
