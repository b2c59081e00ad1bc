"""Test-only parts: the console's signing key and meeting bodies (site.py), a throw-away CA (pki.py).

The broker, daemon process and MQTT recorder are in appliance_dev, shared with the demo and benchmarks."""
