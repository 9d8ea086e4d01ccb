"""Published event contracts."""
