"""Kernel commands: one module per command, each with ``register(app)``.

A command module imports heavy libraries inside the command body only.
"""
