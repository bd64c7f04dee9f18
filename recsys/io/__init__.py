"""IO: the lake (Delta tables), Kafka clients, Spark sessions and the model store. No business logic."""
