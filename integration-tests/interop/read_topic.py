"""Reads a Quire topic with Confluent's Python client and Avro deserializer, as any
third-party consumer would, and prints one JSON object: the records' keys and values."""
import argparse
import json

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "quire-interop-reader",
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
        "broker.address.family": "v4",
    })
    partitions = consumer.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
    pending = set(partitions)
    records = []
    while pending:
        message = consumer.poll(10)
        if message is None:
            raise SystemExit(f"timed out reading {args.topic}; partitions left: {sorted(pending)}")
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(message.partition())
                continue
            raise SystemExit(str(message.error()))
        context = SerializationContext(args.topic, MessageField.VALUE)
        headers = dict(message.headers() or [])
        records.append({
            "key": message.key().decode(),
            "value": deserialize(message.value(), context),
            "idempotency_key": headers.get("quire-idempotency-key", b"").decode(),
        })
    consumer.close()
    print(json.dumps({"records": records}, default=str))


if __name__ == "__main__":
    main()
