"""Thin adapters between the core and the world: MQTT, panel, media, control socket, systemd, storage."""
