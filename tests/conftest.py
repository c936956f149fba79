"""Shared pytest configuration. Fixtures that build worlds live next to the tests that use them."""
