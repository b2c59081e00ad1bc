"""Real media for the appliance: the camera uplink (ffmpeg), the screen (libvlc) and the screens (Pillow)."""
