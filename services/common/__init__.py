"""Framework-free pieces every service shares: request ids, problem documents, the benchmark endpoints' work."""
