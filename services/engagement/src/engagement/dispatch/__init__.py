"""Campaign delivery: rendering, consent decisions, providers (SMTP, HTTP webhook), the dispatcher."""
