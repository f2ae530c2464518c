"""Sandboxed runs in the artifacts VM: toolchains, the cgroup subtree, the runner."""
