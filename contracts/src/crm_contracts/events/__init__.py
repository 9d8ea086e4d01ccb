"""Published event models, one module per bounded context."""
