"""Artifacts: versioned programs run in the artifacts VM's sandbox."""
