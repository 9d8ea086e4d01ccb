"""Shared platform library."""
