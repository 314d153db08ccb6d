"""What every task shares: config-driven training, evaluation, metrics, run folders."""
