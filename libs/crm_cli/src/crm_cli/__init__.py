"""crm operator CLI."""
