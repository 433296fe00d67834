"""GPU workload programs for the priority-scheduling benchmark (each also runs as a script)."""
