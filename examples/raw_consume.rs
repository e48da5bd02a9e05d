//! Baseline for the ingest benchmark: a bare rdkafka consumer in a fresh group that reads a
//! topic from the beginning to partition EOF on every partition and does nothing else.
//! Usage: cargo run --release --example raw_consume -- BROKERS TOPIC
//! Prints one JSON object: records, seconds (from subscribe to the last EOF), records_per_second.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().ok_or("usage: raw_consume BROKERS TOPIC")?;
    let topic = args.next().ok_or("usage: raw_consume BROKERS TOPIC")?;
    let group = format!("raw-consume-{}", std::process::id());
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    let partitions = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))?
        .topics()
        .first()
        .map_or(0, |found| found.partitions().len());
    let started = Instant::now();
    consumer.subscribe(&[&topic])?;
    let (mut records, mut bytes, mut at_end) = (0u64, 0u64, BTreeSet::new());
    while at_end.len() < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload().map_or(0, <[u8]>::len) as u64;
                at_end.remove(&message.partition());
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{records},\"bytes\":{bytes},\"seconds\":{seconds:.3},\"records_per_second\":{:.0}}}",
        records as f64 / seconds
    );
    Ok(())
}
