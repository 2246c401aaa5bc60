"""Everything that learns or searches vectors."""
