"""Real parts for tests: a Mosquitto broker, daemon processes and an MQTT observer, all on 127.0.0.1."""
