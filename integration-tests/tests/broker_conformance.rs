//! What the local broker honours of Kafka's transaction contract, measured with
//! librdkafka: commit, abort visibility to read_committed consumers, offsets committed
//! inside a transaction (and not by an aborted one), and fencing of a zombie producer.
//!
//! The test asserts the behaviour README.md documents ("Broker deviations"). If the
//! broker changes, this fails and says what to update; Quire's own guarantees do not
//! depend on the deviations (see `pipeline.rs`).

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Whether aborted records reach read_committed consumers on the local broker
/// (documented in README.md: nisshi 0.7.0 delivers them).
const DOCUMENTED_ABORTED_RECORDS_VISIBLE: bool = true;

fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let admin: rdkafka::admin::AdminClient<_> = stack.rdkafka_config().create().expect("admin");
    let new = rdkafka::admin::NewTopic::new(topic, partitions, rdkafka::admin::TopicReplication::Fixed(1));
    let result = runtime.block_on(admin.create_topics(&[new], &rdkafka::admin::AdminOptions::new())).expect("create topic");
    assert!(result.iter().all(|r| r.is_ok()), "{result:?}");
}

fn transactional_producer(stack: &Stack, id: &str) -> BaseProducer {
    let producer: BaseProducer = stack
        .rdkafka_config()
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "30000")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    producer.init_transactions(T).expect("init_transactions");
    producer
}

fn read_committed_count(stack: &Stack, topic: &str) -> usize {
    let consumer: BaseConsumer = stack
        .rdkafka_config()
        .set("group.id", unique("reader-"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut count = 0;
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => count += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => return count,
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    panic!("partition end not reached");
}

fn produce(producer: &BaseProducer, topic: &str, n: usize, tag: &str) {
    for i in 0..n {
        producer.send(BaseRecord::to(topic).key(&format!("{tag}-{i}")).payload(tag)).expect("send");
    }
    producer.flush(T).expect("flush");
}

#[test]
fn broker_conformance_report() {
    let stack = Stack::start();
    let mut table: Vec<(&str, String, bool)> = Vec::new();

    // 1. Committed transactions are delivered.
    let topic = unique("conf-commit-");
    create_topic(&stack, &topic, 1);
    let producer = transactional_producer(&stack, &unique("txn-"));
    producer.begin_transaction().unwrap();
    produce(&producer, &topic, 10, "committed");
    producer.commit_transaction(T).expect("commit");
    let committed = read_committed_count(&stack, &topic);
    table.push(("committed records delivered", format!("{committed}/10"), committed == 10));
    assert_eq!(committed, 10);

    // 2. Aborted transactions are hidden from read_committed consumers (Kafka) — or not.
    producer.begin_transaction().unwrap();
    produce(&producer, &topic, 5, "aborted");
    producer.abort_transaction(T).expect("abort");
    let after_abort = read_committed_count(&stack, &topic);
    let leaked = after_abort - committed;
    table.push(("aborted records hidden from read_committed", format!("{leaked} of 5 aborted records visible"), leaked == 0));

    // 3. Offsets sent in a transaction are committed with it; an abort discards them.
    let group = unique("conf-group-");
    let consumer: BaseConsumer = stack
        .rdkafka_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let polled = eventually(T, "the group to receive a record", || consumer.poll(Duration::from_millis(500)).and_then(Result::ok).map(|m| m.offset()));
    assert!(polled.is_ok(), "consumer received nothing");
    let metadata = consumer.group_metadata().expect("group metadata");
    let offsets_at = |n: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(n)).unwrap();
        tpl
    };
    producer.begin_transaction().unwrap();
    producer.send_offsets_to_transaction(&offsets_at(7), &metadata, T).expect("send offsets");
    producer.commit_transaction(T).expect("commit offsets");
    producer.begin_transaction().unwrap();
    producer.send_offsets_to_transaction(&offsets_at(9), &metadata, T).expect("send offsets");
    producer.abort_transaction(T).expect("abort offsets");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let stored = consumer.committed_offsets(tpl, T).unwrap().find_partition(&topic, 0).map(|e| e.offset());
    let offsets_ok = stored == Some(Offset::Offset(7));
    table.push(("offsets committed in the transaction, not by an abort", format!("{stored:?} (want Offset(7))"), offsets_ok));
    assert!(offsets_ok, "group offset after commit(7) + abort(9): {stored:?}");

    // 4. A second producer with the same transactional id fences the first.
    let txn_id = unique("txn-fence-");
    let zombie = transactional_producer(&stack, &txn_id);
    zombie.begin_transaction().unwrap();
    produce(&zombie, &topic, 1, "zombie");
    let _successor = transactional_producer(&stack, &txn_id);
    let zombie_commit = zombie.commit_transaction(T);
    let (fenced, detail) = match &zombie_commit {
        Ok(()) => (false, "zombie committed".to_owned()),
        Err(e) => {
            let code = e.rdkafka_error_code();
            let flags = match e {
                KafkaError::Transaction(t) => format!("fatal={} abortable={} retriable={}", t.is_fatal(), t.txn_requires_abort(), t.is_retriable()),
                _ => String::new(),
            };
            let fenced = matches!(code, Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::Fenced));
            (fenced, format!("{code:?} {flags}"))
        }
    };
    table.push(("zombie producer fenced", detail.clone(), fenced));
    assert!(fenced, "the zombie was not fenced: {detail}");

    println!("\nbroker conformance (local stack):");
    for (check, observed, honoured) in &table {
        println!("  [{}] {check}: {observed}", if *honoured { "honoured" } else { "NOT honoured" });
    }
    assert_eq!(
        leaked > 0,
        DOCUMENTED_ABORTED_RECORDS_VISIBLE,
        "the broker's abort visibility changed ({leaked} aborted records visible): update README.md's broker deviations and this test"
    );
}
