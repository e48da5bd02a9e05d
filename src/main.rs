//! The `embedstream` command line: parses arguments, loads configuration, starts logging and
//! calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use embedstream::config::Config;
use embedstream::eval::{self, EvalConfig, Split};
use embedstream::replay::replay;
use embedstream::source::{self, read_movielens, Format};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Parser)]
#[command(name = "embedstream", version, about = "Real-time stateful embedding stream processor")]
struct Cli {
    /// TOML configuration file (layered over defaults, under EMBEDSTREAM_SECTION__KEY variables).
    #[arg(long, global = true, env = "EMBEDSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
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
    /// Prequential (test-then-learn) evaluation on MovieLens-100k 5-star ratings.
    Eval {
        /// MovieLens u.data.
        #[arg(long, default_value = "data/ml-100k/u.data")]
        input: PathBuf,
        /// Test split (`test`: last 70%, the published protocol; `validation`: 20%..30%).
        #[arg(long, value_enum, default_value_t = Split::Test)]
        split: Split,
        /// Passes over the batch-training 20%.
        #[arg(long, default_value_t = 5)]
        batch_epochs: usize,
        /// Write the moving-average recall chart (SVG) here.
        #[arg(long, default_value = "eval-recall.svg")]
        plot: PathBuf,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Replay { input, format, partitions, json } => {
            run_replay(&config, &input, format, partitions, json)
        }
        Command::Eval { input, split, batch_epochs, plot, json } => {
            let eval_config = EvalConfig { split, batch_epochs, ..EvalConfig::default() };
            run_eval(&config, &input, eval_config, &plot, json)
        }
    }
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
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

fn run_eval(
    config: &Config,
    input: &Path,
    eval_config: EvalConfig,
    plot: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(input).with_context(|| {
        format!("reading {} (run scripts/fetch-movielens.sh first)", input.display())
    })?;
    let ratings = read_movielens(&bytes)?;
    let report = eval::evaluate(&ratings, config.model.clone(), eval_config)?;
    eval::write_recall_plot(&report, plot)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} 5-star events, {} users, {} items; batch {}, warm-up {}, tested {}",
        report.events,
        report.users,
        report.items,
        report.batch_events,
        report.warmup_events,
        report.tested_events
    );
    println!("{:<12} {:>10} {:>8} {:>10}", "", "recall@10", "MPR", "NDCG@10");
    for (name, metrics) in [("popularity", &report.popularity), ("model", &report.model)] {
        println!(
            "{name:<12} {:>10.4} {:>8.4} {:>10.4}",
            metrics.recall_at_10, metrics.mpr, metrics.ndcg_at_10
        );
    }
    println!("plot        {}", plot.display());
    Ok(())
}
