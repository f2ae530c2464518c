"""Prompt layers, their fitting to the context window, and the strategies that fill them."""
