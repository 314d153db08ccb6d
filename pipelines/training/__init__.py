"""Training: what every model kind shares around its steps (the runner, its loggers)."""
