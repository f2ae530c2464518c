"""Somnus guest agent: runs inside every VM and serves the model, prompts and memory."""

__version__ = "0.1.0"
