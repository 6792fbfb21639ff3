"""Serving trained adapters: many tasks from one backbone pass (`multitask`)."""
