"""support service."""
