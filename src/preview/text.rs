//! A preview as `strangler check --preview` prints it for people.

use std::fmt::Write as _;

use super::compare::{percent, Preview};

/// The preview as a few aligned tables.
pub fn render(preview: &Preview) -> String {
    let mut out = String::new();
    let total_rate = if preview.window_seconds > 0.0 {
        preview.sampled as f64 * preview.sample_every as f64 / preview.window_seconds.max(1.0)
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "{} sampled requests (1 in {}) over the last {:.0} s, ~{:.1} req/s",
        preview.sampled, preview.sample_every, preview.window_seconds, total_rate
    );
    if preview.sampled == 0 {
        out.push_str("no recent traffic to route: the proxy has sampled no request yet\n");
    }
    out.push('\n');
    if preview.moves.is_empty() {
        out.push_str("nothing would move\n");
    } else {
        let _ = writeln!(
            out,
            "would move: {} of recent requests, {} sticky keys",
            percent(preview.moving_share),
            preview.moving_sticky_keys
        );
        let rows: Vec<[String; 6]> = preview
            .moves
            .iter()
            .map(|m| {
                [
                    route_change(m.from_route.as_deref(), m.to_route.as_deref()),
                    format!("{} → {}", name(m.from_upstream.as_deref()), name(m.to_upstream.as_deref())),
                    percent(m.share),
                    format!("±{:.1}", m.margin * 100.0),
                    format!("{:.1}", m.requests_per_second),
                    m.sticky_keys.to_string(),
                ]
            })
            .collect();
        table(&mut out, ["ROUTE", "UPSTREAM", "SHARE", "95%", "REQ/S", "KEYS"], &rows);
    }
    let moving_routes: Vec<[String; 5]> = preview
        .routes
        .iter()
        .map(|r| {
            [
                name(r.route.as_deref()).to_string(),
                percent(r.share),
                percent(r.moving_share),
                format!("{:.1}", r.moving_requests_per_second),
                r.moving_sticky_keys.to_string(),
            ]
        })
        .collect();
    if !moving_routes.is_empty() {
        out.push_str("\nper route in force:\n");
        table(&mut out, ["ROUTE", "SHARE", "MOVING", "REQ/S MOVING", "KEYS MOVING"], &moving_routes);
    }
    if !preview.unreachable.is_empty() {
        out.push_str("\nroutes that would receive nothing:\n");
        for u in &preview.unreachable {
            let _ = writeln!(out, "  {} ({}): {}", u.route, u.reason.replace('_', " "), u.detail);
        }
    }
    if !preview.routes_without_traffic.is_empty() {
        let _ = writeln!(
            out,
            "\nno recent request falls under: {} (no evidence)",
            preview.routes_without_traffic.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nno route would take {} of recent requests (today: {})",
        percent(preview.unmatched_share),
        percent(preview.unmatched_share_now)
    );
    out
}

/// `comments` when the route stays, `api → comments` when it changes.
fn route_change(from: Option<&str>, to: Option<&str>) -> String {
    if from == to {
        name(from).to_string()
    } else {
        format!("{} → {}", name(from), name(to))
    }
}

fn name(route_or_upstream: Option<&str>) -> &str {
    route_or_upstream.unwrap_or("(none)")
}

/// Rows under a header, columns padded to their widest cell (numbers right-aligned).
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let width =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..N).map(width).collect();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if i < 2 {
                let _ = write!(text, "  {cell}{pad}");
            } else {
                let _ = write!(text, "  {pad}{cell}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::super::compare::{Move, RouteMoves, Unreachable};
    use super::*;

    #[test]
    fn a_preview_prints_its_moves_routes_and_unreachable_routes() {
        let preview = Preview {
            sampled: 200,
            sample_every: 16,
            window_seconds: 10.0,
            moves: vec![Move {
                from_route: Some("comments".into()),
                to_route: Some("comments".into()),
                from_upstream: Some("legacy".into()),
                to_upstream: Some("comments".into()),
                share: 0.3,
                margin: 0.0635,
                requests_per_second: 96.0,
                sticky_keys: 4,
            }],
            moving_share: 0.3,
            moving_sticky_keys: 4,
            routes: vec![RouteMoves {
                route: Some("comments".into()),
                share: 0.3,
                moving_share: 0.3,
                moving_requests_per_second: 96.0,
                moving_sticky_keys: 4,
            }],
            unreachable_routes: vec!["api".into()],
            unreachable: vec![Unreachable {
                route: "api".into(),
                reason: "shadowed".into(),
                detail: "100.0% of recent requests fall under its prefix and every one goes to users".into(),
                taken_by: vec!["users".into()],
                covered_share: 1.0,
            }],
            routes_without_traffic: vec!["new".into()],
            unmatched_share: 0.0,
            unmatched_share_now: 0.0,
        };
        let text = render(&preview);
        assert!(text.contains("200 sampled requests (1 in 16) over the last 10 s, ~320.0 req/s"), "{text}");
        assert!(text.contains("\n  comments  legacy → comments  30.0%  ±6.3   96.0     4\n"), "{text}");
        assert!(text.contains("\n  comments  30.0%   30.0%          96.0            4\n"), "{text}");
        assert!(text.contains("api (shadowed): 100.0% of recent requests"), "{text}");
        assert!(text.contains("no recent request falls under: new"), "{text}");
        assert!(text.contains("no route would take 0.0% of recent requests (today: 0.0%)"), "{text}");
    }
}
