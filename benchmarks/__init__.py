"""Speed and memory targets, measured against real parts (`make bench`). Never run as timed tests."""
