use std::path::Path;

use plotters::prelude::*;

use super::EvalReport;

/// Why the plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing plot {path}: {message}")]
pub struct PlotError {
    /// Target file.
    pub path: String,
    /// What plotters reported.
    pub message: String,
}

/// Writes an SVG chart of the moving-average recall@10 of the three recommenders over the tested
/// stream, one curve per ranker (popularity, kNN, model; x: tested event index, y: recall over
/// the last `curve_window` events).
///
/// # Errors
/// [`PlotError`] when the file cannot be written.
pub fn write_recall_plot(report: &EvalReport, path: &Path) -> Result<(), PlotError> {
    draw(report, path)
        .map_err(|error| PlotError { path: path.display().to_string(), message: error.to_string() })
}

fn draw(report: &EvalReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let series = [
        ("popularity", &report.popularity, RED),
        ("item co-occurrence kNN", &report.knn, GREEN),
        ("embedstream model", &report.model, BLUE),
    ];
    let points = series.iter().map(|(_, metrics, _)| metrics.curve.len()).max().unwrap_or(1);
    let top = series
        .iter()
        .flat_map(|(_, metrics, _)| metrics.curve.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.05)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Prequential recall@10 (moving average over {} events)",
                report.config.curve_window
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0..points, 0.0..top)?;
    chart.configure_mesh().x_desc("tested event").y_desc("recall@10").draw()?;
    for (label, metrics, color) in series {
        chart
            .draw_series(LineSeries::new(metrics.curve.iter().copied().enumerate(), color))?
            .label(format!("{label}: {:.4}", metrics.recall_at_10))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}
