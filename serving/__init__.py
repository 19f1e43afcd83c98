"""BentoML inference service for fleetcast."""
