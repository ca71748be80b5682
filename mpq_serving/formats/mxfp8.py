"""placeholder until the format lands."""
