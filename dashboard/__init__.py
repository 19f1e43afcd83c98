"""Streamlit dashboard for fleetcast; reads only from the service HTTP API."""
