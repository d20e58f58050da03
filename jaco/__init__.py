"""jaco: a cluster control plane whose state lives in etcd, and the backup system for it."""

__version__ = "1.0.0"
