"""Reproduces nisshi 0.7.0 leaving committed transactions unreadable for good (README.md,
broker deviations): three transactional producers commit at once, one record on each of
PARTITIONS shared partitions per transaction, ROUNDS times; then a read_committed
consumer counts what it can read, and, if something is missing, one more commit (by a
producer restarted with a stuck one's transactional id) is tried. On Kafka every record
is readable. With 12 partitions and 200 rounds about one run in five loses some here.

    scripts/python-env.sh
    target/debug/quire stack up --dir /tmp/race --broker-port 39192 --registry-port 39193
    .venv/bin/python integration-tests/broker/concurrent_commits.py 127.0.0.1:39192 12 200
"""
import sys, time, threading
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
bs = sys.argv[1]; parts = int(sys.argv[2]); rounds = int(sys.argv[3])
topic = 'race-%d' % int(time.time())
admin = AdminClient({'bootstrap.servers': bs}); admin.create_topics([NewTopic(topic, parts, 1)])[topic].result(); time.sleep(1)
def commit(p, value):
    p.begin_transaction()
    for q in range(parts):
        p.produce(topic, value=value, partition=q)
    p.flush(30)
    p.commit_transaction(30)

def readable():
    """Records a new read_committed consumer reads from the start to every partition's end."""
    c = Consumer({'bootstrap.servers': bs, 'group.id': 'r%f' % time.time(), 'isolation.level': 'read_committed', 'enable.partition.eof': True, 'enable.auto.commit': False})
    c.assign([TopicPartition(topic, q, 0) for q in range(parts)])
    seen, eof, t0 = 0, set(), time.time()
    while len(eof) < parts and time.time() - t0 < 60:
        m = c.poll(0.5)
        if m is None: continue
        if m.error():
            if m.error().code() == -191: eof.add(m.partition())
            continue
        seen += 1
    c.close()
    return seen

def run(name):
    p = Producer({'bootstrap.servers': bs, 'transactional.id': name + topic, 'linger.ms': 0})
    p.init_transactions(30)
    for r in range(rounds):
        commit(p, b'v')

ts = [threading.Thread(target=run, args=(n,)) for n in ('a', 'b', 'c')]
[t.start() for t in ts]; [t.join() for t in ts]
time.sleep(1)
committed = 3 * rounds * parts
seen = readable()
print(f"{topic}: committed {committed}, readable {seen}")
if seen < committed:
    # One more transaction, by a producer restarted with a's id, then read again.
    p = Producer({'bootstrap.servers': bs, 'transactional.id': 'a' + topic}); p.init_transactions(30)
    commit(p, b'w')
    time.sleep(5)
    print(f"after one more commit (restarted producer a, {parts} records) and 5 s: readable {readable()} of {committed + parts}")
