//! The `eval` subcommand: arguments and the printed report.

use std::path::{Path, PathBuf};

use anyhow::Context;
use embedstream::config::Config;
use embedstream::eval::{
    self, parse_csv_columns, EvalConfig, InputFormat, InputSpec, KnnConfig, Positive, Split, TsUnit,
};

/// Arguments of `embedstream eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Event file.
    #[arg(long, default_value = "data/ml-100k/u.data")]
    input: PathBuf,
    /// Input format (`movielens`: u.data; `jsonl`: the event contract, one event per line;
    /// `csv`: with a header row and --csv-columns).
    #[arg(long, value_enum, default_value_t = InputFormat::Movielens)]
    format: InputFormat,
    /// What counts as a positive event: comma-separated event types and/or `rating>=X`, all
    /// of which must hold (default: `rating>=5` for movielens, every event otherwise).
    #[arg(long)]
    positive: Option<String>,
    /// CSV column mapping `field=header,...`: user_id, item_id and ts required; event_type,
    /// rating, weight, event_id optional.
    #[arg(long)]
    csv_columns: Option<String>,
    /// Unit of the CSV ts column.
    #[arg(long, value_enum, default_value_t = TsUnit::Millis)]
    csv_ts_unit: TsUnit,
    /// Event type of CSV rows when no event_type column is mapped.
    #[arg(long, default_value = "like")]
    csv_event_type: String,
    /// CSV field delimiter (one ASCII character).
    #[arg(long, default_value_t = ',')]
    csv_delimiter: char,
    /// Test split (`test`: after batch and warm-up, the published protocol; `validation`:
    /// the warm-up part, for tuning).
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Share of the stream trained in batch.
    #[arg(long, default_value_t = 0.2)]
    batch_fraction: f64,
    /// Share applied online before the test part (the validation split's test part).
    #[arg(long, default_value_t = 0.1)]
    warmup_fraction: f64,
    /// Passes of the model over the batch part.
    #[arg(long, default_value_t = 5)]
    batch_epochs: usize,
    /// kNN baseline: the user's recent items that score the candidates.
    #[arg(long, default_value_t = KnnConfig::default().recent_items)]
    knn_recent_items: usize,
    /// kNN baseline: the user's recent items each new event co-occurs with.
    #[arg(long, default_value_t = KnnConfig::default().cooccurrence_items)]
    knn_cooccurrence_items: usize,
    /// kNN baseline: weight of log-scaled popularity ln(1 + n) / ln(1 + n_max) in its score.
    #[arg(long, default_value_t = KnnConfig::default().popularity_weight)]
    knn_popularity_weight: f32,
    /// kNN baseline: weight ratio of consecutive recent items when scoring (1: equal).
    #[arg(long, default_value_t = KnnConfig::default().recency_decay)]
    knn_recency_decay: f32,
    /// kNN baseline: exponent of the asymmetric cosine (0.5: cosine).
    #[arg(long, default_value_t = KnnConfig::default().asymmetry)]
    knn_asymmetry: f32,
    /// kNN baseline: added to the similarity's denominator (0: plain cosine).
    #[arg(long, default_value_t = KnnConfig::default().shrinkage)]
    knn_shrinkage: f32,
    /// Write the moving-average recall chart (SVG) here.
    #[arg(long, default_value = "eval-recall.svg")]
    plot: PathBuf,
    /// Print the report as one JSON object (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// Runs the evaluation and prints the report.
pub fn run_eval(config: &Config, args: EvalArgs) -> anyhow::Result<()> {
    let types = config.events.event_types()?;
    let default_positive = match args.format {
        InputFormat::Movielens => "rating>=5",
        InputFormat::Jsonl | InputFormat::Csv => "",
    };
    let positive = Positive::parse(args.positive.as_deref().unwrap_or(default_positive), &types)?;
    let csv = match (&args.csv_columns, args.format) {
        (Some(columns), _) => {
            let delimiter = u8::try_from(args.csv_delimiter)
                .ok()
                .filter(u8::is_ascii)
                .context("--csv-delimiter must be one ASCII character")?;
            Some(parse_csv_columns(columns, args.csv_ts_unit, &args.csv_event_type, delimiter)?)
        }
        (None, InputFormat::Csv) => anyhow::bail!("--format csv needs --csv-columns"),
        (None, _) => None,
    };
    let spec = InputSpec {
        format: args.format,
        types: &types,
        limits: &config.events.limits,
        positive: &positive,
        csv: csv.as_ref(),
    };
    let events = eval::read_eval_events(&args.input, &spec).with_context(|| {
        format!(
            "reading {} (for MovieLens run scripts/fetch-movielens.sh first)",
            args.input.display()
        )
    })?;
    let eval_config = EvalConfig {
        split: args.split,
        batch_epochs: args.batch_epochs,
        batch_fraction: args.batch_fraction,
        warmup_fraction: args.warmup_fraction,
        ..EvalConfig::default()
    };
    let knn_config = KnnConfig {
        recent_items: args.knn_recent_items,
        cooccurrence_items: args.knn_cooccurrence_items,
        popularity_weight: args.knn_popularity_weight,
        recency_decay: args.knn_recency_decay,
        asymmetry: args.knn_asymmetry,
        shrinkage: args.knn_shrinkage,
    };
    let bar = crate::progress_bar(events.len() as u64, args.json);
    let report = eval::evaluate(&events, config.model.clone(), knn_config, eval_config, &bar)?;
    bar.finish_and_clear();
    eval::write_recall_plot(&report, &args.plot)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    print_report(&report, &args.plot);
    Ok(())
}

fn print_report(report: &eval::EvalReport, plot: &Path) {
    println!(
        "{} positive events, {} users, {} items; batch {}, warm-up {}, tested {}",
        report.events,
        report.users,
        report.items,
        report.batch_events,
        report.warmup_events,
        report.tested_events
    );
    println!("{:<12} {:>10} {:>8} {:>10}", "", "recall@10", "MPR", "NDCG@10");
    for (name, metrics) in
        [("popularity", &report.popularity), ("knn", &report.knn), ("model", &report.model)]
    {
        println!(
            "{name:<12} {:>10.4} {:>8.4} {:>10.4}",
            metrics.recall_at_10, metrics.mpr, metrics.ndcg_at_10
        );
    }
    println!("plot        {}", plot.display());
}
