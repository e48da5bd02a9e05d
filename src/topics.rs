//! `embedstream topics create`: the events topic and the dead-letter topic, through rdkafka's
//! admin client (Kafka's CreateTopics API), so that no shell script or broker tool is needed.
//! Idempotent: a topic that exists is reported with its partition count and left as it is.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::ingest::KafkaConfig;

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicOutcome {
    /// Topic name.
    pub topic: String,
    /// `created` or `exists`.
    pub outcome: &'static str,
    /// Partitions asked for.
    pub requested_partitions: i32,
    /// Partitions the broker reports now.
    pub partitions: i32,
}

/// Creates each `(name, partitions)` topic with `replication` replicas, leaving existing ones.
///
/// # Errors
/// The broker's refusal for a topic (other than "already exists"), or no metadata for it.
pub async fn create(
    kafka: &KafkaConfig,
    topics: &[(String, i32)],
    replication: i32,
) -> anyhow::Result<Vec<TopicOutcome>> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config(&[]).create().context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await.context("CreateTopics")?;
    let mut outcomes = Vec::with_capacity(topics.len());
    for ((name, partitions), result) in topics.iter().zip(results) {
        let outcome = match result {
            Ok(_) => "created",
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => "exists",
            Err((_, code)) => anyhow::bail!("creating topic {name}: {code}"),
        };
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(10))
            .with_context(|| format!("metadata of {name}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name)
            .with_context(|| format!("no metadata for {name}"))?;
        let count = found.partitions().len() as i32;
        if outcome == "exists" && count != *partitions {
            tracing::warn!(topic = %name, partitions = count, requested = partitions, "topic exists with another partition count; left as it is");
        }
        outcomes.push(TopicOutcome {
            topic: name.clone(),
            outcome,
            requested_partitions: *partitions,
            partitions: count,
        });
    }
    Ok(outcomes)
}
