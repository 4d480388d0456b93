//! SVG charts of a report, drawn with `plotters`: recall@k curves per system, the score distributions of
//! positives and negatives per model, and the learning curve of the two-tower model against the pretrained
//! models' levels.

use std::path::Path;

use plotters::prelude::*;

use super::report::EvalReport;
use super::EvalError;

fn plot_err(path: &Path) -> impl Fn(String) -> EvalError + '_ {
    move |message| EvalError::Plot { path: path.display().to_string(), message }
}

/// Every chart's legend: a framed, slightly transparent box of the series labels at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(position).draw()
}

fn color(i: usize) -> RGBColor {
    // Colour-blind-friendly (Okabe–Ito), then the plotters palette.
    const OKABE_ITO: [(u8, u8, u8); 8] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (0, 0, 0),
        (240, 228, 66),
    ];
    match OKABE_ITO.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Mean recall@k against k (log scale) for every system of the report.
pub fn recall_curves(report: &EvalReport, path: &Path) -> Result<(), EvalError> {
    let err = plot_err(path);
    let k_max = report.scores.iter().map(|s| s.recall_curve.len()).max().unwrap_or(1).max(2);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: recall@k ({} docs, {} queries)", report.set, report.corpus_documents, report.queries),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..k_max as f64).log_scale(), 0f64..1f64)
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("k").y_desc("recall@k").draw().map_err(|e| err(e.to_string()))?;
    for (i, s) in report.scores.iter().enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = s.recall_curve.iter().enumerate().map(|(k, r)| ((k + 1) as f64, *r)).collect();
        let style = if s.method == "hnsw" { c.stroke_width(1) } else { c.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| err(e.to_string()))?
            .label(s.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Per model, the distributions (share of queries per bin) of the positive's score, the best negative's and a
/// random negative's.
pub fn score_distributions(report: &EvalReport, path: &Path) -> Result<(), EvalError> {
    let err = plot_err(path);
    let n = report.quality.len().max(1);
    let root = SVGBackend::new(path, (900, 220 * n as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(&format!("{}: score distributions (cosine)", report.set), ("sans-serif", 20))
        .map_err(|e| err(e.to_string()))?;
    for (area, q) in root.split_evenly((n, 1)).iter().zip(&report.quality) {
        let series = [
            ("positive", &q.positive_histogram, RGBColor(0, 158, 115)),
            ("best negative", &q.best_negative_histogram, RGBColor(213, 94, 0)),
            ("random negative", &q.random_negative_histogram, RGBColor(120, 120, 120)),
        ];
        let total = q.queries.max(1) as f64;
        let top =
            series.iter().flat_map(|(_, h, _)| h.counts.iter().map(|c| *c as f64 / total)).fold(0.05f64, f64::max)
                * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} ({} queries)", q.model, q.queries), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(-1f64..1f64, 0f64..top)
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().y_desc("share").draw().map_err(|e| err(e.to_string()))?;
        for (name, h, c) in series {
            let width = (h.high - h.low) / h.counts.len() as f64;
            let points: Vec<(f64, f64)> = h
                .counts
                .iter()
                .enumerate()
                .map(|(i, count)| (h.low + (i as f64 + 0.5) * width, *count as f64 / total))
                .collect();
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// One line of a learning-curve chart.
pub struct CurveLine {
    pub name: String,
    /// (training pairs, mean, low, high).
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A metric against training pairs (log scale): the trained models' curves with their intervals (dashed), and
/// the reference systems as horizontal lines.
pub fn learning_curve(
    title: &str,
    metric: &str,
    curves: &[CurveLine],
    references: &[(String, f64)],
    path: &Path,
) -> Result<(), EvalError> {
    let err = plot_err(path);
    let xs: Vec<f64> = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min).clamp(1.0, 1e9) / 1.5;
    let x_max = xs.iter().copied().fold(1.0, f64::max) * 1.5;
    let y_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.3))
        .chain(references.iter().map(|r| r.1))
        .fold(0.1f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max.min(1.0))
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("training pairs").y_desc(metric).draw().map_err(|e| err(e.to_string()))?;
    let mut i = 0;
    for c in curves {
        let col = color(i);
        i += 1;
        let mean: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(mean.clone(), col.stroke_width(3)))
            .map_err(|e| err(e.to_string()))?
            .label(format!("{} (95 % CI dashed)", c.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3)));
        chart.draw_series(mean.iter().map(|p| Circle::new(*p, 4, col.filled()))).map_err(|e| err(e.to_string()))?;
        for bound in [2, 3] {
            let points: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, if bound == 2 { p.2 } else { p.3 })).collect();
            chart
                .draw_series(DashedLineSeries::new(points, 4, 4, col.stroke_width(1)))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    for (name, level) in references {
        let col = color(i);
        i += 1;
        chart
            .draw_series(DashedLineSeries::new(vec![(x_min, *level), (x_max, *level)], 8, 4, col.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_curve_writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.svg");
        let curves = vec![CurveLine {
            name: "two-tower".into(),
            points: vec![(1000.0, 0.1, 0.08, 0.12), (4000.0, 0.3, 0.27, 0.33)],
        }];
        learning_curve("t", "MRR@10", &curves, &[("minilm".into(), 0.25)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("minilm") && svg.contains("two-tower"));
    }
}
