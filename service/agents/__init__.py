"""Agent role presets, the service-wide agent cap and discussion orchestration."""
