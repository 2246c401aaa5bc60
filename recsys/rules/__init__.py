"""Business rules: filter and boost expressions, scenarios, per-user hidden items."""
