"""Methods as benchmark plug-ins (each module adds to `bench.cli.METHODS`)."""
