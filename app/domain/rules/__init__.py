"""Business rules as pure functions: no Faust, no Kafka, no I/O, no clock."""
