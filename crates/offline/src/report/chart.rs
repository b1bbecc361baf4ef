//! A route's timeline as an inline SVG chart: the match rate with the
//! threshold on top, and below it, on an axis of their own, the compared
//! requests per bucket with the shadow errors stacked on them. Both axes
//! have round ticks (steps of 1, 2 or 5 times a power of ten); the x-axis is
//! the report's whole span, the same for every route.

use std::fmt::Write;

use strangler_evidence::summary::{fmt_pct, TimelineView};

use super::html::esc;

/// Steps of 1, 2 and 5 times a power of ten, smallest first.
fn steps() -> impl Iterator<Item = f64> {
    (-4..=9).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
}

/// The smallest round step that covers `range` in at most `intervals` steps.
pub fn nice_step(range: f64, intervals: u32) -> f64 {
    let range = range.max(1e-4);
    steps().find(|s| range / s <= intervals as f64 + 1e-9).unwrap_or(1e9)
}

/// Decimals that show every multiple of `step` exactly.
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).max(0.0) as usize
}

/// A linear axis with round ticks: `min`, `min + step`, ... `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub step: f64,
}

impl Axis {
    /// The match-rate axis: up to 100%, low enough to show `lowest` (the
    /// lowest point, or the threshold if lower) with some room below it.
    pub fn rate(lowest: f64, threshold: f64) -> Axis {
        let lowest = lowest.min(threshold).clamp(0.0, 100.0);
        let room = ((100.0 - lowest) * 0.1).max(0.005);
        let low = (lowest - room).max(0.0);
        let step = nice_step(100.0 - low, 5);
        let k = (low / step + 1e-9).floor();
        Axis { min: (k * step).max(0.0), max: 100.0, step }
    }

    /// A count axis from 0 to at least `max` (whole steps of at least 1).
    pub fn count(max: u64) -> Axis {
        let step = nice_step(max.max(1) as f64, 3).max(1.0);
        let top = ((max.max(1) as f64) / step).ceil() * step;
        Axis { min: 0.0, max: top, step }
    }

    /// The tick values, low to high.
    pub fn ticks(&self) -> Vec<f64> {
        let n = ((self.max - self.min) / self.step + 1e-6).floor() as i64;
        (0..=n).map(|i| self.min + i as f64 * self.step).collect()
    }

    /// A tick as text, with the decimals the step needs.
    pub fn label(&self, v: f64) -> String {
        format!("{v:.prec$}", prec = decimals(self.step))
    }
}

/// A count in few characters: `950`, `12k`, `2.5k`, `1.2M`.
fn compact(v: f64) -> String {
    let (v, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{v:.1}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

const W: f64 = 1100.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 18.0;
const RATE_TOP: f64 = 12.0;
const RATE_H: f64 = 170.0;
const VOL_TOP: f64 = RATE_TOP + RATE_H + 34.0;
const VOL_H: f64 = 64.0;
const H: f64 = VOL_TOP + VOL_H + 42.0;

/// Renders the chart of one route (`threshold`: the minimum match rate).
pub fn render(o: &mut String, t: &TimelineView, threshold: f64) {
    let compared: u64 = t.buckets.iter().map(|b| b.compared + b.shadow_error).sum();
    if t.buckets.is_empty() || compared == 0 {
        o.push_str("<h3>Match rate over time</h3><p class=\"muted\">No compared requests.</p>");
        return;
    }
    let pw = W - LEFT - RIGHT;
    let n = t.buckets.len();
    let x = |i: f64| LEFT + pw * i / n as f64;
    let width = humantime::format_duration(std::time::Duration::from_secs(t.bucket_seconds)).to_string();
    let _ = write!(
        o,
        "<h3>Match rate over time <span class=\"legend\"><i style=\"background:var(--acc)\"></i>match rate\
         <i style=\"background:var(--bad);opacity:.6\"></i>threshold {threshold}%\
         <i style=\"background:#c8ccd3\"></i>compared requests<i style=\"background:#f79009\"></i>shadow errors</span></h3>\
         <svg class=\"timeline\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"match rate and requests over time\" \
         xmlns=\"http://www.w3.org/2000/svg\">"
    );
    rate_panel(o, t, threshold, &x);
    volume_panel(o, t, &x, &width);
    time_axis(o, t, &x);
    let _ = write!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{n} buckets of {width}</text></svg>",
        LEFT + pw,
        H - 2.0
    );
}

/// One horizontal grid line of a panel at height `y`, with its tick label
/// left of the axis; `style` is the line's colour and the label's class.
fn grid_line(o: &mut String, right: f64, y: f64, style: (&str, &str), label: &str) {
    let (stroke, class) = style;
    let _ = write!(
        o,
        "<line x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>\
         <text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
        LEFT - 6.0,
        y + 4.0
    );
}

fn rate_panel(o: &mut String, t: &TimelineView, threshold: f64, x: &dyn Fn(f64) -> f64) {
    let lowest = t.buckets.iter().filter_map(|b| b.match_percent).fold(100.0f64, f64::min);
    let axis = Axis::rate(lowest, threshold);
    let y = |v: f64| RATE_TOP + RATE_H * (1.0 - (v - axis.min) / (axis.max - axis.min));
    let right = x(t.buckets.len() as f64);
    for v in axis.ticks() {
        grid_line(o, right, y(v), ("#eaecf0", "rate-tick"), &format!("{}%", axis.label(v)));
    }
    if threshold >= axis.min {
        let ty = y(threshold);
        let _ = write!(
            o,
            "<line x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#b42318\" stroke-dasharray=\"5 4\" opacity=\".7\"/>"
        );
    }
    // The line, broken where a bucket had no compared requests.
    let mut d = String::new();
    let mut pen = false;
    for (i, b) in t.buckets.iter().enumerate() {
        match b.match_percent {
            Some(p) => {
                let _ = write!(d, "{}{:.1},{:.1} ", if pen { "L" } else { "M" }, x(i as f64 + 0.5), y(p));
                pen = true;
            }
            None => pen = false,
        }
    }
    let _ =
        write!(o, "<path d=\"{d}\" fill=\"none\" stroke=\"#3559e0\" stroke-width=\"2\" stroke-linejoin=\"round\"/>");
    for (i, b) in t.buckets.iter().enumerate() {
        if let Some(p) = b.match_percent {
            let color = if p < threshold { "#b42318" } else { "#3559e0" };
            let _ = write!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.6\" fill=\"{color}\"><title>{} · {}% of {} compared</title></circle>",
                x(i as f64 + 0.5),
                y(p),
                esc(&b.start),
                fmt_pct(p),
                b.compared
            );
        }
    }
}

fn volume_panel(o: &mut String, t: &TimelineView, x: &dyn Fn(f64) -> f64, width: &str) {
    let max = t.buckets.iter().map(|b| b.compared + b.shadow_error).max().unwrap_or(0);
    let axis = Axis::count(max);
    let y = |v: f64| VOL_TOP + VOL_H * (1.0 - v / axis.max);
    let right = x(t.buckets.len() as f64);
    let _ =
        write!(o, "<text x=\"{LEFT}\" y=\"{:.1}\" text-anchor=\"start\">requests per {width}</text>", VOL_TOP - 6.0);
    for v in axis.ticks() {
        grid_line(o, right, y(v), ("#f2f4f7", "count-tick"), &compact(v));
    }
    let slot = x(1.0) - x(0.0);
    let bw = (slot * 0.72).max(1.0);
    for (i, b) in t.buckets.iter().enumerate() {
        if b.compared + b.shadow_error == 0 {
            continue;
        }
        let left = x(i as f64 + 0.5) - bw / 2.0;
        let (top_c, top_e) = (y(b.compared as f64), y((b.compared + b.shadow_error) as f64));
        let _ = write!(
            o,
            "<g><title>{} · {} compared, {} shadow errors</title>\
             <rect x=\"{left:.1}\" y=\"{top_c:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#c8ccd3\"/>",
            esc(&b.start),
            b.compared,
            b.shadow_error,
            VOL_TOP + VOL_H - top_c
        );
        if b.shadow_error > 0 {
            let _ = write!(
                o,
                "<rect class=\"errors\" x=\"{left:.1}\" y=\"{top_e:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#f79009\"/>",
                (top_c - top_e).max(1.0)
            );
        }
        o.push_str("</g>");
    }
    let base = VOL_TOP + VOL_H;
    let _ = write!(o, "<line x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#98a2b3\"/>");
}

/// Time labels at bucket boundaries, about six of them, and always the end of the span.
fn time_axis(o: &mut String, t: &TimelineView, x: &dyn Fn(f64) -> f64) {
    let n = t.buckets.len();
    let every = n.div_ceil(6).max(1);
    let first_day = &t.buckets[0].start[..10.min(t.buckets[0].start.len())];
    let y = VOL_TOP + VOL_H + 16.0;
    let label = |ts: &str, full: bool| -> String {
        let (day, time) = (ts.get(..10).unwrap_or(ts), ts.get(11..16).unwrap_or(""));
        if full || day != first_day {
            format!("{day} {time}")
        } else {
            time.to_string()
        }
    };
    let end_x = x(n as f64);
    let mut marks: Vec<(f64, String, &str)> = Vec::new();
    for i in (0..n).step_by(every) {
        let xx = x(i as f64);
        if end_x - xx < 90.0 && i > 0 {
            break;
        }
        marks.push((xx, label(&t.buckets[i].start, i == 0), if i == 0 { "start" } else { "middle" }));
    }
    if let Some(end) = &t.end {
        marks.push((end_x, format!("{} UTC", label(end, false)), "end"));
    }
    for (xx, text, anchor) in marks {
        let _ = write!(
            o,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#98a2b3\"/>\
             <text x=\"{xx:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{}</text>",
            VOL_TOP + VOL_H,
            VOL_TOP + VOL_H + 4.0,
            esc(&text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step is round when it is 1, 2 or 5 times a power of ten.
    fn round_step(step: f64) -> bool {
        let e = step.log10().floor();
        let m = step / 10f64.powf(e);
        [1.0, 2.0, 5.0].iter().any(|r| (m - r).abs() < 1e-6)
    }

    #[test]
    fn rate_ticks_are_round_and_end_at_100() {
        for (lowest, threshold) in
            [(99.96, 99.9), (99.89, 99.9), (100.0, 99.9), (97.3, 99.9), (12.0, 99.0), (100.0, 100.0)]
        {
            let axis = Axis::rate(lowest, threshold);
            let ticks = axis.ticks();
            assert!(round_step(axis.step), "{lowest}: step {}", axis.step);
            assert!(ticks.len() >= 2 && ticks.len() <= 7, "{lowest}: {ticks:?}");
            assert!((ticks.last().unwrap() - 100.0).abs() < 1e-9, "{lowest}: {ticks:?}");
            assert!(axis.min <= lowest.min(threshold), "{lowest}: the lowest point is on the chart");
            for t in &ticks {
                assert!(((t / axis.step).round() * axis.step - t).abs() < 1e-9, "{t} is a multiple of {}", axis.step);
            }
        }
        let axis = Axis::rate(99.96, 99.9);
        let labels: Vec<String> = axis.ticks().iter().map(|t| axis.label(*t)).collect();
        assert_eq!(labels, ["99.85", "99.90", "99.95", "100.00"]);
    }

    #[test]
    fn count_ticks_are_round_and_cover_the_highest_bar() {
        for max in [0, 1, 7, 137, 1000, 45_678] {
            let axis = Axis::count(max);
            assert!(round_step(axis.step) && axis.step >= 1.0, "{max}: {}", axis.step);
            assert!(axis.max >= max as f64 && axis.max < max as f64 + axis.step + 1.0, "{max}: {axis:?}");
            assert_eq!(axis.ticks()[0], 0.0);
        }
        assert_eq!(Axis::count(137).ticks(), vec![0.0, 50.0, 100.0, 150.0]);
        assert_eq!(compact(2500.0), "2.5k");
        assert_eq!(compact(150.0), "150");
        assert_eq!(compact(1_000_000.0), "1M");
    }
}
