"""engagement service."""
