//! The `embedstream` command line: parses arguments, loads configuration, starts logging and
//! calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use embedstream::config::Config;
use embedstream::ingest::StartPosition;
use embedstream::produce::{self, Pace};
use embedstream::replay::replay;
use embedstream::source::{self, Format};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod eval_cli;

/// mimalloc instead of glibc's malloc: it returns freed pages to the operating system, so the
/// service's resident memory after a catch-up follows its live state rather than the peak of
/// the catch-up; built without transparent huge pages (feature `no_thp`) so that partly used
/// 2 MiB pages are not kept resident whole (BENCHMARKS.md, "Memory per entity").
#[cfg(all(feature = "mimalloc", not(feature = "heap-stats")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With the `heap-stats` feature (benchmarks only, off by default): the same allocator, counting
/// the bytes allocated and not yet freed (the live heap), which [`report_live_heap`] writes out.
#[cfg(all(feature = "mimalloc", feature = "heap-stats"))]
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

#[cfg(all(not(feature = "mimalloc"), feature = "heap-stats"))]
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// With the `heap-stats` feature and `EMBEDSTREAM_HEAP_STATS_FILE` set: a thread that writes the
/// live heap, in bytes, to that file every second (replacing its content), so that
/// `scripts/bench-memory.sh` can set it beside the RSS (BENCHMARKS.md, "Memory per entity").
#[cfg(feature = "heap-stats")]
fn report_live_heap() {
    let Some(path) = std::env::var_os("EMBEDSTREAM_HEAP_STATS_FILE") else { return };
    std::thread::spawn(move || loop {
        let live = ALLOCATOR.allocated();
        if let Err(error) = std::fs::write(&path, format!("{live}\n")) {
            eprintln!("heap-stats: cannot write {}: {error}", PathBuf::from(&path).display());
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h; the version is pinned
/// by Cargo.lock). Checked at start against the option's documented default.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc v3's default purge delay, ms.
#[cfg(feature = "mimalloc")]
const MI_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Makes mimalloc give freed pages back to the operating system at once instead of after its
/// purge delay (1 s in v3), unless the operator set `MIMALLOC_PURGE_DELAY`. With the delay,
/// the memory of buffers freed during a catch-up (the Redis connection of a large flush is
/// dropped after it, see `store::write::LARGE_TRANSACTION_BYTES`) stayed resident: 396 MiB
/// against 192 MiB without it, at 200,000 users and 20,000 items (BENCHMARKS.md, "Memory per
/// entity").
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_get and mi_option_set read and store an integer in mimalloc's option
    // table; they take no pointers and may be called at any time (mimalloc.h).
    let current = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    if current == MI_DEFAULT_PURGE_DELAY_MS {
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

#[derive(Debug, Parser)]
#[command(name = "embedstream", version, about = "Real-time stateful embedding stream processor")]
struct Cli {
    /// TOML configuration file (layered over defaults, under EMBEDSTREAM_SECTION__KEY variables).
    #[arg(long, global = true, env = "EMBEDSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr: `text` (human-readable) or `json` (one JSON object per line, with
    /// the span fields such as an HTTP request's `request_id`). Levels come from `RUST_LOG`
    /// (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EMBEDSTREAM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the events topic (kafka.topic) and the dead-letter topic
    /// (kafka.dead_letter_topic); existing topics are left as they are. Prints one JSON object
    /// per topic: topic, outcome (created or exists), requested_partitions, partitions.
    Create {
        /// Partitions of the events topic: the most consumer-group members that can share the
        /// work (default 4).
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Partitions of the dead-letter topic (default 1).
        #[arg(long, default_value_t = 1)]
        dead_letter_partitions: i32,
        /// Replicas of each partition (default 1: a single-broker development cluster; use 3
        /// in production).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// Every namespace holding a model, with the aliases pointing at each, and every alias.
    List,
    /// What a namespace holds: layout version, dimension, events applied, users, items, stored
    /// progress per topic and partition, aliases. Exit status 1 when it holds no model.
    Inspect {
        /// The namespace.
        namespace: String,
    },
    /// Point ALIAS at NAMESPACE in one Redis command (creating the alias). Refused when
    /// NAMESPACE holds no model. Running instances with store.alias = ALIAS restore NAMESPACE,
    /// then swap what they serve and ingest, whole, without a restart.
    Switch {
        /// The alias.
        alias: String,
        /// The namespace it will point at.
        namespace: String,
    },
    /// Remove NAMESPACE's stored progress for TOPIC (every partition, or the ones given), so
    /// that those partitions start at `run --from` again, keeping the learned state. For a
    /// topic the broker lost (`run` exit status 5); run it while no instance consumes TOPIC
    /// into NAMESPACE. Prints each removed partition's resume offset. Exit status 1 when
    /// NAMESPACE holds no model, or no progress for TOPIC or for a partition given.
    ResetProgress {
        /// The namespace.
        namespace: String,
        /// The topic whose progress is removed.
        #[arg(long)]
        topic: String,
        /// A partition to reset (repeatable; default: every partition with stored progress).
        #[arg(long = "partition")]
        partitions: Vec<i32>,
    },
    /// Delete every key of NAMESPACE (UNLINK, in batches). Refused while an alias points at
    /// it. Prints the keys deleted.
    Drop {
        /// The namespace.
        namespace: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fold a file through decode, windows and model; print a summary with the state digest.
    Replay {
        /// Input file.
        #[arg(long)]
        input: PathBuf,
        /// Input format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Spread records over this many partitions with Kafka's keyed partitioner, to
        /// reproduce a topic's per-partition order.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Prequential (test-then-learn) evaluation of popularity, an item co-occurrence kNN and
    /// the model, side by side, on MovieLens u.data, JSON-lines events or CSV.
    Eval(eval_cli::EvalArgs),
    /// Run the service: consume the topic in a consumer group, fold, persist to Redis, index,
    /// and serve the HTTP API until SIGINT or SIGTERM.
    Run {
        /// Where partitions without stored progress start: earliest, latest, timestamp:<ms>,
        /// offsets:<p>=<o>,... (stored progress in the namespace always wins).
        #[arg(long, default_value = "earliest")]
        from: StartPosition,
        /// Redis namespace (overrides store.namespace): a new one rebuilds state from scratch.
        #[arg(long)]
        namespace: Option<String>,
        /// Serve and ingest the namespace this alias points at and follow its switches
        /// (overrides store.alias; created pointing at the namespace when absent).
        #[arg(long)]
        alias: Option<String>,
        /// Events topic (overrides kafka.topic).
        #[arg(long)]
        topic: Option<String>,
        /// Consumer group (overrides kafka.group_id).
        #[arg(long)]
        group: Option<String>,
        /// HTTP listen address (overrides http.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Exit (after the final flush) once every assigned partition is consumed, applied and
        /// flushed: rebuild a namespace from a topic and stop.
        #[arg(long)]
        exit_when_caught_up: bool,
        /// Serve the demo page at /demo (sets http.demo; for demonstrations only: anyone who
        /// reaches it can sign in as any user).
        #[arg(long)]
        demo: bool,
    },
    /// Rebuild a namespace from the topic, headless: consume to the end (no HTTP server, no
    /// JWKS needed), flush, read the namespace back from Redis, verify its digest against the
    /// state in memory and print a JSON summary (namespace, digest, events_applied, users,
    /// items, verified). Exit status 1 when the read-back differs.
    Rebuild {
        /// Where partitions without stored progress in NS start: earliest, timestamp:<ms>,
        /// offsets:<p>=<o>,...
        #[arg(long, default_value = "earliest")]
        from: StartPosition,
        /// The namespace to build (a new one starts from scratch; one with stored progress
        /// resumes).
        #[arg(long)]
        namespace: String,
        /// Events topic (overrides kafka.topic).
        #[arg(long)]
        topic: Option<String>,
        /// Consumer group (default `rebuild-<namespace>`, so a live service's group is never
        /// joined).
        #[arg(long)]
        group: Option<String>,
    },
    /// Publish a dataset to Kafka in event-time order, keyed by user, event time as the record
    /// timestamp.
    Produce {
        /// Input file.
        #[arg(long)]
        input: PathBuf,
        /// Input format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Topic (default: kafka.topic).
        #[arg(long)]
        topic: Option<String>,
        /// At most this many records per second.
        #[arg(long, conflicts_with = "speedup")]
        rate: Option<f64>,
        /// Replay event-time gaps divided by this factor.
        #[arg(long)]
        speedup: Option<f64>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Digest of the state stored in a Redis namespace (compare with `replay`).
    Digest {
        /// Redis namespace (overrides store.namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Namespaces and their aliases (like Qdrant's collection aliases): list, inspect, point
    /// an alias at a namespace (running instances with store.alias follow within
    /// store.alias_poll_ms), reset a topic's stored progress, drop a namespace. Prints JSON.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// Kafka topics of the service, through rdkafka's admin client.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Write the learned vectors of a Redis namespace to files, for notebooks: ids, vectors,
    /// queries or context vectors, biases, event counts and last event times.
    Export {
        /// Redis namespace (overrides store.namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// Users (p_u and the ranking query) or items (q_i, c_i, b_i).
        #[arg(long, value_enum)]
        what: embedstream::export::What,
        /// `jsonl`: one object per line; `npy`: a directory of .npy files and ids.json.
        #[arg(long, value_enum, default_value_t = embedstream::export::ExportFormat::Jsonl)]
        format: embedstream::export::ExportFormat,
        /// Output file (jsonl; stdout when absent) or directory (npy, required).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Feature flags of the namespace (`{ns}:flags`); prints the resulting document as JSON.
    /// Running services pick a change up within flags.refresh_ms.
    Flags {
        /// Redis namespace (overrides store.namespace).
        #[arg(long, global = true)]
        namespace: Option<String>,
        #[command(subcommand)]
        action: FlagsCommand,
    },
    /// Authentication tools: key pairs, tokens, client secret hashes.
    Auth {
        #[command(subcommand)]
        action: AuthCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Generate an Ed25519 key pair: DIR/signing-key.pem (PKCS#8, for auth.signing_key_path)
    /// and DIR/jwks.json (the public JWK, for auth.jwks_path).
    Keygen {
        /// Output directory (created if missing; existing files are overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// Key id (default: key-<unix seconds>).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Mint an access token with the configured signing key and print it (dev and ops tool).
    Token {
        /// Subject: a user id, or client:<id> for a service.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes (recs:read, events:write, admin).
        #[arg(long, default_value = "recs:read")]
        scope: String,
        /// Lifetime, s (default: auth.access_ttl_s).
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// Read a client secret from stdin and print its argon2id PHC string (for the clients
    /// file's secret_hash).
    HashSecret,
}

#[derive(Debug, Subcommand)]
enum FlagsCommand {
    /// Print the stored document (the defaults when none is stored).
    Get,
    /// Replace the whole document with a JSON file (validated), or stdin without --file.
    Set {
        /// JSON document; `-` or absent: read stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Turn a switch (personalization, session_blending, ann, redis_reads) on for a share of
    /// users.
    Enable {
        /// Flag name.
        name: String,
        /// Share of users, by stable bucket, 0..=100.
        #[arg(long, default_value_t = 100)]
        percent: u32,
    },
    /// Turn a switch off for everyone.
    Disable {
        /// Flag name.
        name: String,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    purge_freed_memory_at_once();
    #[cfg(feature = "heap-stats")]
    report_live_heap();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // `run` ends with the status of a halted ingest engine (3 or 4, see README).
            let status = error
                .chain()
                .find_map(|cause| cause.downcast_ref::<embedstream::ingest::ConsumerError>())
                .map_or(1, embedstream::ingest::ConsumerError::exit_status);
            ExitCode::from(u8::try_from(status).unwrap_or(1))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Replay { input, format, partitions, json } => {
            run_replay(&config, &input, format, partitions, json)
        }
        Command::Eval(args) => eval_cli::run_eval(&config, args),
        Command::Run {
            from,
            namespace,
            alias,
            topic,
            group,
            listen,
            exit_when_caught_up,
            demo,
        } => {
            let mut config = config;
            config.http.demo |= demo;
            if let Some(namespace) = namespace {
                config.store.namespace = namespace;
            }
            if let Some(alias) = alias {
                config.store.alias = alias;
            }
            if let Some(topic) = topic {
                config.kafka.topic = topic;
            }
            if let Some(group) = group {
                config.kafka.group_id = group;
            }
            if let Some(listen) = listen {
                config.http.listen = listen;
            }
            config.validate()?;
            run_service(config, from, exit_when_caught_up)
        }
        Command::Rebuild { from, namespace, topic, group } => {
            let mut config = config;
            config.kafka.group_id = group.unwrap_or_else(|| format!("rebuild-{namespace}"));
            config.store.namespace = namespace;
            // A rebuild fills the namespace it names, whatever alias serving follows.
            config.store.alias = String::new();
            if let Some(topic) = topic {
                config.kafka.topic = topic;
            }
            // No HTTP server runs, so nothing verifies or issues tokens: the auth settings (JWKS,
            // keys) are neither needed nor checked.
            config.auth.enabled = false;
            config.validate()?;
            // Length: events applied plus the records still to consume (librdkafka's
            // statistics, every 5 s), so it settles on the total as the lag is read.
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events applied ({per_sec}, eta {eta}) {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let ticker = bar.clone();
            let summary = runtime()?.block_on(embedstream::app::rebuild(
                config,
                from,
                move |applied, lag| {
                    ticker
                        .set_length(applied.saturating_add(lag).max(ticker.length().unwrap_or(0)));
                    ticker.set_position(applied);
                },
            ))?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&summary)?);
            anyhow::ensure!(summary.verified, "the state read back from Redis differs from memory");
            Ok(())
        }
        Command::Produce { input, format, topic, rate, speedup, json } => {
            let pace = match (rate, speedup) {
                (Some(rate), _) => Pace::Rate(rate),
                (_, Some(factor)) => Pace::Speedup(factor),
                _ => Pace::Unlimited,
            };
            run_produce(&config, &input, format, topic, pace, json)
        }
        Command::Auth { action } => run_auth(&config, action),
        Command::Flags { namespace, action } => {
            let mut store = config.store;
            if let Some(namespace) = namespace {
                store.namespace = namespace;
            }
            run_flags(&store, action)
        }
        Command::Namespace { command } => run_namespace(&config.store, command),
        Command::Topics {
            command:
                TopicsCommand::Create { partitions, dead_letter_partitions, replication_factor },
        } => {
            let topics = [
                (config.kafka.topic.clone(), partitions),
                (config.kafka.dead_letter_topic.clone(), dead_letter_partitions),
            ];
            let outcomes = runtime()?.block_on(embedstream::topics::create(
                &config.kafka,
                &topics,
                replication_factor,
            ))?;
            for outcome in outcomes {
                println!("{}", serde_json::to_string(&outcome)?);
            }
            Ok(())
        }
        Command::Export { namespace, what, format, output } => {
            let mut config = config;
            if let Some(namespace) = namespace {
                config.store.namespace = namespace;
            }
            let model = embedstream::app::load_stored_model(&config)?;
            let rows = match (format, output) {
                (embedstream::export::ExportFormat::Npy, Some(dir)) => {
                    embedstream::export::write_npy(&model, what, &dir)?
                }
                (embedstream::export::ExportFormat::Npy, None) => {
                    anyhow::bail!("--format npy needs --output DIR")
                }
                (embedstream::export::ExportFormat::Jsonl, Some(path)) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    embedstream::export::write_jsonl(
                        &model,
                        what,
                        &mut std::io::BufWriter::new(file),
                    )?
                }
                (embedstream::export::ExportFormat::Jsonl, None) => {
                    embedstream::export::write_jsonl(
                        &model,
                        what,
                        &mut std::io::BufWriter::new(std::io::stdout().lock()),
                    )?
                }
            };
            tracing::info!(rows, namespace = %config.store.namespace, "exported");
            Ok(())
        }
        Command::Digest { namespace, json } => {
            let mut config = config;
            if let Some(namespace) = namespace {
                config.store.namespace = namespace;
            }
            let model = embedstream::app::load_stored_model(&config)?;
            let summary = serde_json::json!({
                "namespace": config.store.namespace,
                "digest": model.digest(),
                "events_applied": model.events_applied(),
                "users": model.user_count(),
                "items": model.item_count(),
            });
            if json {
                println!("{summary}");
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
    }
}

fn run_namespace(
    store: &embedstream::store::StoreConfig,
    command: NamespaceCommand,
) -> anyhow::Result<()> {
    use embedstream::store::SyncStore;
    let of = |namespace: &str| embedstream::store::StoreConfig {
        namespace: namespace.to_owned(),
        ..store.clone()
    };
    let mut redis = SyncStore::new(store)?;
    let output = match command {
        NamespaceCommand::List => {
            let aliases = redis.aliases()?;
            let namespaces: Vec<serde_json::Value> = redis
                .namespaces()?
                .into_iter()
                .map(|namespace| {
                    let pointing: Vec<&String> = aliases
                        .iter()
                        .filter(|(_, target)| **target == namespace)
                        .map(|(alias, _)| alias)
                        .collect();
                    serde_json::json!({ "namespace": namespace, "aliases": pointing })
                })
                .collect();
            serde_json::json!({ "namespaces": namespaces, "aliases": aliases })
        }
        NamespaceCommand::Inspect { namespace } => {
            let info = SyncStore::new(&of(&namespace))?.inspect()?;
            let info = info.with_context(|| format!("namespace {namespace} holds no model"))?;
            serde_json::to_value(info)?
        }
        NamespaceCommand::Switch { alias, namespace } => {
            anyhow::ensure!(
                !alias.is_empty() && !alias.contains(char::is_whitespace),
                "an alias must be non-empty without spaces"
            );
            let holds_model = SyncStore::new(&of(&namespace))?.load_meta()?.is_some();
            anyhow::ensure!(holds_model, "namespace {namespace} holds no model: not switching");
            let previous = redis.switch_alias(&alias, &namespace)?;
            serde_json::json!({ "alias": alias, "namespace": namespace, "previous": previous })
        }
        NamespaceCommand::ResetProgress { namespace, topic, partitions } => {
            let mut target = SyncStore::new(&of(&namespace))?;
            let info = target.inspect()?;
            let info = info.with_context(|| format!("namespace {namespace} holds no model"))?;
            // Refused rather than a silent no-op, so that a typo never looks like a reset.
            let stored: Vec<i32> = info
                .progress
                .get(&topic)
                .map(|partitions| partitions.keys().filter_map(|p| p.parse().ok()).collect())
                .unwrap_or_default();
            anyhow::ensure!(
                !stored.is_empty(),
                "namespace {namespace} holds no progress for topic {topic:?} (it holds progress \
                 for {:?})",
                info.progress.keys().collect::<Vec<_>>()
            );
            if let Some(missing) = partitions.iter().find(|p| !stored.contains(p)) {
                anyhow::bail!(
                    "namespace {namespace} holds no progress for {topic} partition {missing} \
                     (it holds partitions {stored:?})"
                );
            }
            let removed = target.reset_progress(&topic, &partitions)?;
            let removed: std::collections::BTreeMap<String, i64> = removed
                .into_iter()
                .map(|(partition, resume)| (partition.to_string(), resume))
                .collect();
            serde_json::json!({ "namespace": namespace, "topic": topic, "removed": removed })
        }
        NamespaceCommand::Drop { namespace } => {
            let mut target = SyncStore::new(&of(&namespace))?;
            anyhow::ensure!(
                target.load_meta()?.is_some(),
                "namespace {namespace} holds no model: nothing to drop"
            );
            let deleted = target.drop_namespace()?;
            serde_json::json!({ "namespace": namespace, "deleted_keys": deleted })
        }
    };
    println!("{output}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")
}

fn run_service(
    config: Config,
    from: StartPosition,
    exit_when_caught_up: bool,
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding {}", config.http.listen))?;
        tracing::info!(listen = %listener.local_addr()?, "http listening");
        let options = embedstream::app::RunOptions { start: from, exit_when_caught_up };
        embedstream::app::run(config, options, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn run_produce(
    config: &Config,
    input: &Path,
    format: Format,
    topic: Option<String>,
    pace: Pace,
    json: bool,
) -> anyhow::Result<()> {
    let records = source::read_records(input, format)
        .with_context(|| format!("reading {} as {format:?}", input.display()))?;
    let topic = topic.unwrap_or_else(|| config.kafka.topic.clone());
    let bar = progress_bar(records.len() as u64, json);
    let summary =
        runtime()?.block_on(produce::produce(&records, &config.kafka, &topic, pace, &bar))?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "produced {} records to {} ({} partitions) in {:.1} s, {} failed",
            summary.produced, summary.topic, summary.partitions, summary.seconds, summary.failed
        );
    }
    anyhow::ensure!(summary.failed == 0, "{} records were not delivered", summary.failed);
    Ok(())
}

pub(crate) fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn run_replay(
    config: &Config,
    input: &Path,
    format: Format,
    partitions: i32,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1, got {partitions}");
    let records = source::read_records(input, format)
        .with_context(|| format!("reading {} as {format:?}", input.display()))?;
    let bar = progress_bar(records.len() as u64, json);
    let (summary, _) = replay(&records, config, partitions, &bar)?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!("records     {}", summary.received);
    println!("applied     {}", summary.applied);
    println!("rejected    {}", summary.rejected);
    for (reason, count) in &summary.rejected_by_reason {
        println!("  {reason:<28} {count}");
    }
    println!("late        {}", summary.late);
    println!("duplicates  {}", summary.duplicates);
    println!("users       {}", summary.users);
    println!("items       {}", summary.items);
    println!("digest      {}", summary.digest);
    println!(
        "fold        {:.3} s, {:.0} events/s",
        summary.fold_seconds, summary.events_per_second
    );
    Ok(())
}

fn run_flags(store: &embedstream::store::StoreConfig, command: FlagsCommand) -> anyhow::Result<()> {
    use embedstream::flags::{FlagsAction, FlagsDoc};
    let action = match command {
        FlagsCommand::Get => FlagsAction::Get,
        FlagsCommand::Set { file } => {
            let text = match file.as_deref() {
                Some(path) if path != Path::new("-") => std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
                _ => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
            };
            FlagsAction::Set(FlagsDoc::from_json(&text)?)
        }
        FlagsCommand::Enable { name, percent } => {
            FlagsAction::Enable { name: name.parse()?, percent }
        }
        FlagsCommand::Disable { name } => FlagsAction::Disable { name: name.parse()? },
    };
    let doc = embedstream::flags::run_action(store, action)
        .with_context(|| format!("flags of namespace {}", store.namespace))?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn run_auth(config: &Config, command: AuthCommand) -> anyhow::Result<()> {
    use embedstream::auth::{issue, now_s, Scopes};
    match command {
        AuthCommand::Keygen { dir, kid } => {
            let kid = kid.unwrap_or_else(|| format!("key-{}", now_s()));
            let files = issue::keygen(&dir, &kid)?;
            let summary = serde_json::json!({
                "kid": kid,
                "signing_key_path": files.signing_key,
                "jwks_path": files.jwks,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        AuthCommand::Token { sub, scope, ttl_s } => {
            let scopes = Scopes::parse_strict(&scope)
                .map_err(|name| anyhow::anyhow!("unknown scope {name:?}"))?;
            let signer = issue::Signer::from_config(&config.auth)?.ok_or_else(|| {
                anyhow::anyhow!("set auth.signing_key_path and auth.signing_kid to mint tokens")
            })?;
            let ttl_s = ttl_s.unwrap_or(config.auth.access_ttl_s);
            let (token, _) = signer.mint(&sub, scopes, ttl_s, now_s())?;
            println!("{token}");
        }
        AuthCommand::HashSecret => {
            let secret = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(secret.len() >= 16, "a client secret needs at least 16 characters");
            println!("{}", issue::hash_secret(secret)?);
        }
    }
    Ok(())
}
