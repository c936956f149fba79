"""What both node programs (device plugin, DRA driver) are told the same way, declared once: where GPUs
come from, the API server, an in-container limiter; and what is built from those flags."""

from __future__ import annotations

import argparse
import os

from fracgpu.core.shareenv import LimiterConfig
from fracgpu.deviceplugin.backends import open_backend
from fracgpu.deviceplugin.backends.base import GpuBackend
from fracgpu.startup import Flag

GPU_FLAGS = (
    Flag("backend", "where GPUs come from", "nvml", env=("FRACGPU_BACKEND",), choices=("nvml", "simulated")),
    Flag("gpus", "YAML file of simulated GPUs, with --backend simulated", env=("FRACGPU_GPUS_FILE",), metavar="FILE",
         unset="none"),
    Flag("node-name", "this node's name (required; in a DaemonSet from the downward API)", env=("NODE_NAME",),
         metavar="NAME", unset="none"),
)

KUBE_FLAGS = (
    Flag("kubeconfig", "kubeconfig file", env=("KUBECONFIG",), metavar="FILE", unset="in-cluster config"),
    Flag("kube-api", "API server URL", env=("FRACGPU_KUBE_API", "FRACGPU_KUBE_HOST"), old=("kube-host",),
         metavar="URL", unset="--kubeconfig, else in-cluster config"),
)

LIMITER_FLAGS = (
    Flag("limiter-dir", "host directory of an in-container limiter (HAMi-core libvgpu.so) to mount and configure",
         env=("FRACGPU_LIMITER_DIR",), metavar="DIR", unset="no limiter"),
    Flag("limiter-container-dir", "where the limiter directory appears in containers", "/usr/local/vgpu",
         env=("FRACGPU_LIMITER_CONTAINER_DIR",), metavar="DIR"),
    Flag("limiter-preload", "host file mounted as /etc/ld.so.preload", env=("FRACGPU_LIMITER_PRELOAD",),
         metavar="FILE", unset="none"),
)


def backend_from(args: argparse.Namespace) -> GpuBackend:
    """The GPU backend of GPU_FLAGS; ValueError says what is missing."""
    return open_backend(args.backend, args.gpus, args.node_name)


def limiter_from(args: argparse.Namespace) -> LimiterConfig | None:
    """The limiter of LIMITER_FLAGS, None without --limiter-dir."""
    if not args.limiter_dir:
        return None
    return LimiterConfig(host_dir=args.limiter_dir, container_dir=args.limiter_container_dir,
                         preload_file=args.limiter_preload or "")


def file_stamp(path: str) -> tuple[int, int] | None:
    """(inode, ctime) of a socket file, None when it is gone: a socket deleted and made again, by the
    kubelet or another process, has another stamp than the one we made."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)
