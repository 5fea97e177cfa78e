"""What the running agent reports: /healthz, /metrics, health-check listeners."""
