"""The daemon: lifecycle, the 1 s tick, config, durable store, Redis bus, metrics, CLI."""
