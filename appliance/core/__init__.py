"""The sans-I/O core: state machine and protocol. Events in, effects out; no threads, no sockets."""
