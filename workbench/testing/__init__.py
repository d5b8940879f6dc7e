"""Support for testing and benchmarking the workbench's faces (the dashboard in a real browser)."""
