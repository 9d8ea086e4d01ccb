"""Japanese-aware normalisation and scoring of names and addresses (identity only)."""
