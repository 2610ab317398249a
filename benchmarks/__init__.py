"""Benchmarks of vfio-virtio: resume latency (state retention vs soft reset vs SUSPEND), the
request path (C ring vs Python ring), ring processing alone, and a libvfio-user C baseline.

Entry point: ``python -m benchmarks.run [--quick] [--out DIR]`` (see docs/BENCHMARKS.md).
Benchmarks print and save their figures; they never pass or fail on a time.
"""
