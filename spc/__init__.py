"""spc package."""
