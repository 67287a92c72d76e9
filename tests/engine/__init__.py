"""Engine tests: Faust and aiokafka behaviour the engine relies on or works around."""
