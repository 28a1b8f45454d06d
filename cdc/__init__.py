"""What leaves the ledger: outbox relay -> Kafka, Kafka -> DynamoDB sink, replay and verify."""
