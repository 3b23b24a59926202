"""Short training runs: the learning-rate sweep behind ``lr-sweep`` and the dynamics probe."""
