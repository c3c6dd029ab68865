"""Runnable examples built on tidings' public API."""
