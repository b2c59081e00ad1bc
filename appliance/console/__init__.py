"""appliance-console: the central operator's CLI for the whole fleet (sites, keys, broker, meetings)."""
