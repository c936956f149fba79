"""Kubernetes adapter: every API call fracgpu makes goes through this package.

- ``client``: build an official-client ``ApiClient`` and the ``Transport`` that sends requests;
- ``writer``: ``KubeWriter``, the typed writes and reads (patch, bind, evict, taint, leases, ...);
- ``reflector``: ``Reflector``, list+watch of one resource into a callback (plain JSON dicts);
- ``errors``: the ``KubeAPIError`` family (no ``ApiException`` leaves this package);
- ``resources`` / ``objects``: resource descriptors and helpers to read plain JSON objects.

Objects are plain JSON dicts, exactly as the API server sends them; nothing here returns
client models. Nobody outside this package imports ``kubernetes``.
"""
