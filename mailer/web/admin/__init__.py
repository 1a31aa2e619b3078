"""The staff console under /admin."""
