"""The per-version vector tables and custom spaces: the only code that speaks SQL to them."""
