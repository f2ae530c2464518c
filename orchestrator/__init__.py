"""Somnus host orchestrator: images, VMs and their lifecycle, driven through libvirt."""
