"""Shared pytest configuration: loads the harness fixtures (broker, cloud, mock_pins, fake_smbus)."""

pytest_plugins = ["tests.harness.fixtures"]
