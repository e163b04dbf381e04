"""Checkpoints on disk: safe header reading, layout, dialects, conversion, inspection."""
