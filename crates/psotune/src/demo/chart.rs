//! A dependency-free SVG line chart for the HTML report: loss and
//! implicit-accuracy curves over training steps.

/// A smoothed copy of `ys`: the trailing mean over `window` points, so a
/// noisy per-step loss reads as a curve.
pub fn moving_average(ys: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(ys.len());
    let mut sum = 0.0;
    for i in 0..ys.len() {
        sum += ys[i];
        if i >= w {
            sum -= ys[i - w];
        }
        out.push(sum / (i + 1).min(w) as f64);
    }
    out
}

/// An inline `<svg>` of one series `(x, y)` with axis labels at the
/// extremes; an empty or non-finite series draws an empty frame.
pub fn line_chart(title: &str, points: &[(f64, f64)], width: f64, height: f64) -> String {
    let pts: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let (pad_l, pad_r, pad_t, pad_b) = (52.0, 12.0, 24.0, 28.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" class=\"chart\">\
<text x=\"{pad_l}\" y=\"16\" class=\"title\">{}</text>\
<rect x=\"{pad_l}\" y=\"{pad_t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        escape(title),
        width - pad_l - pad_r,
        height - pad_t - pad_b
    );
    if let (Some(x0), Some(x1)) = (pts.first().map(|p| p.0), pts.last().map(|p| p.0)) {
        let (ymin, ymax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (xspan, yspan) = ((x1 - x0).max(1e-12), (ymax - ymin).max(1e-12));
        let sx = |x: f64| pad_l + (x - x0) / xspan * (width - pad_l - pad_r);
        let sy = |y: f64| height - pad_b - (y - ymin) / yspan * (height - pad_t - pad_b);
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        svg.push_str(&format!("<polyline fill=\"none\" stroke=\"#2a6fdb\" stroke-width=\"1.5\" points=\"{}\"/>", path.join(" ")));
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>\
<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>\
<text x=\"{pad_l}\" y=\"{:.1}\" class=\"tick\">{}</text>\
<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            pad_l - 4.0,
            pad_t + 10.0,
            fmt(ymax),
            pad_l - 4.0,
            height - pad_b,
            fmt(ymin),
            height - 8.0,
            fmt(x0),
            width - pad_r,
            height - 8.0,
            fmt(x1)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Escape text for HTML/SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_by_hand() {
        assert_eq!(moving_average(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
        assert_eq!(moving_average(&[2.0, 4.0], 10), vec![2.0, 3.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn chart_maps_extremes_to_the_frame() {
        let svg = line_chart("loss <per step>", &[(0.0, 1.0), (10.0, 0.5), (20.0, 0.0)], 200.0, 100.0);
        // x 0 -> left edge 52, x 20 -> 200 - 12; y 1 -> top 24, y 0 -> bottom 72.
        assert!(svg.contains("points=\"52.0,24.0 120.0,48.0 188.0,72.0\""), "{svg}");
        assert!(svg.contains("loss &lt;per step&gt;"));
        // Non-finite points are dropped; an empty series still draws a frame.
        let empty = line_chart("x", &[(f64::NAN, 1.0)], 200.0, 100.0);
        assert!(empty.contains("<rect") && !empty.contains("polyline"));
    }
}
