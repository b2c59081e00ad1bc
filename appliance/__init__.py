"""rapat-appliance: firmware for the Banyuwangi meeting-room appliance."""

__version__ = "0.1.0"
