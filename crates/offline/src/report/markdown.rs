//! The report as Markdown, for pull requests and chat.

use std::fmt::Write;

use serde_json::Value;
use strangler_evidence::summary::{fmt_pct, NameCount, Report, StatsView};

/// Text safe inside a Markdown table cell: pipes, backticks, angle brackets
/// and newlines escaped (values come from live traffic).
pub fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied().unwrap_or(' ');
        match c {
            '|' => out.push_str("\\|"),
            // `<` only starts HTML before a letter, `/`, `!` or `?`; `&` only starts an entity before a letter or `#`.
            '<' if next.is_ascii_alphabetic() || matches!(next, '/' | '!' | '?') => out.push_str("&lt;"),
            '&' if next.is_ascii_alphanumeric() || next == '#' => out.push_str("&amp;"),
            '`' => out.push('\''),
            '*' | '_' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c)
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A value shown in a table cell.
pub fn value(v: &Value) -> String {
    let text = match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    };
    cell(&text)
}

/// How a field label is shown.
pub fn field_name(f: &str) -> String {
    if f.is_empty() {
        "(whole body)".to_string()
    } else {
        f.to_string()
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "–".into())
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Shadow traffic report\n");
    let verdict = if r.ready { "✅ all routes ready to cut over" } else { "❌ not ready" };
    let _ = writeln!(
        o,
        "**{verdict}** — thresholds: match rate ≥ {}% over ≥ {} compared requests.\n",
        r.options.min_match, r.options.min_samples
    );
    let _ = writeln!(
        o,
        "Generated {} from {} source(s): {}. Records {} (read {}, **corrupt lines {}**, filtered out {}, duplicates ignored {}). Span {} → {}.\n",
        r.generated_at,
        r.inputs.files.len(),
        r.inputs.files.iter().map(|f| format!("`{}`", f.replace('`', "'"))).collect::<Vec<_>>().join(", "),
        r.totals.sampled,
        r.inputs.lines,
        r.inputs.corrupt_lines,
        r.inputs.filtered_out,
        r.inputs.duplicates_ignored,
        r.span.first.as_deref().unwrap_or("–"),
        r.span.last.as_deref().unwrap_or("–"),
    );
    let list = |items: &[NameCount]| {
        items.iter().map(|n| format!("{} ({})", cell(&n.name), n.count)).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(o, "Instances: {}. Config versions: {}.\n", list(&r.instances), list(&r.config_hashes));
    let _ = writeln!(o, "| Route | Verdict | Compared | Match rate (95% CI) | Mismatch | Shadow errors | Skipped |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|");
    for route in &r.routes {
        let s = &route.stats;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&route.route),
            if route.verdict.ready {
                "✅ ready".to_string()
            } else {
                format!("❌ {}", cell(&route.verdict.reasons.join("; ")))
            },
            s.counts.compared,
            rate(s),
            s.counts.mismatched,
            s.counts.shadow_error,
            s.counts.skipped
        );
    }
    for route in &r.routes {
        let _ = writeln!(o, "\n## Route `{}`\n", route.route.replace('`', "'"));
        if route.verdict.ready {
            let _ = writeln!(o, "**Verdict: ✅ ready to cut over.**\n");
        } else {
            let _ = writeln!(o, "**Verdict: ❌ not ready** — {}.\n", cell(&route.verdict.reasons.join("; ")));
        }
        stats(&mut o, &route.stats);
        if !route.timeline.buckets.is_empty() {
            let points: Vec<String> = route
                .timeline
                .buckets
                .iter()
                .filter_map(|b| b.match_percent.map(|p| format!("{}%", fmt_pct(p))))
                .collect();
            let errors: u64 = route.timeline.buckets.iter().map(|b| b.shadow_error).sum();
            let _ = writeln!(
                o,
                "\nMatch rate over time ({} s buckets): {}{}\n",
                route.timeline.bucket_seconds,
                points.join(" · "),
                if errors > 0 { format!(" (shadow errors: {errors})") } else { String::new() }
            );
        }
        if route.endpoints.len() > 1 {
            let _ = writeln!(o, "\n### Endpoints\n");
            let _ = writeln!(
                o,
                "| Endpoint | Compared | Match rate (95% CI) | Mismatch | Top field | Shadow errors | Skipped |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---|---:|---:|");
            for e in &route.endpoints {
                let s = &e.stats;
                let _ = writeln!(
                    o,
                    "| {} {} | {} | {} | {} | {} | {} | {} |",
                    cell(&e.method),
                    cell(&e.endpoint),
                    s.counts.compared,
                    rate(s),
                    s.counts.mismatched,
                    s.fields.first().map(|f| cell(&field_name(&f.field))).unwrap_or_default(),
                    s.counts.shadow_error,
                    s.counts.skipped
                );
            }
        }
    }
    o
}

fn rate(s: &StatsView) -> String {
    match &s.match_rate {
        Some(r) => format!("{}% ({}–{})", fmt_pct(r.percent), fmt_pct(r.ci95_low), fmt_pct(r.ci95_high)),
        None => "–".into(),
    }
}

fn stats(o: &mut String, s: &StatsView) {
    let _ = writeln!(
        o,
        "Compared **{}**, match **{}**{}, mismatch **{}** (status {}, header {}, body {}), match rate **{}**.\n",
        s.counts.compared,
        s.counts.matched,
        if s.rejudged_as_match > 0 {
            format!(" ({} of them written as mismatches whose every field is fleet noise)", s.rejudged_as_match)
        } else {
            String::new()
        },
        s.counts.mismatched,
        s.mismatches_by_kind.status,
        s.mismatches_by_kind.header,
        s.mismatches_by_kind.body,
        rate(s)
    );
    if !s.triage.is_empty() {
        let _ = writeln!(o, "### Triage: mismatches by set of differing fields\n");
        let _ = writeln!(o, "| Mismatches | Share | Differing fields | Example requests |");
        let _ = writeln!(o, "|---:|---:|---|---|");
        for g in &s.triage {
            let fields: Vec<String> = g.fields.iter().map(|f| cell(&field_name(f)).to_string()).collect();
            let examples: Vec<String> = g
                .examples
                .iter()
                .map(|e| format!("{} {} ({})", cell(&e.method), cell(&e.path), cell(&e.request_id)))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {}% | {{{}}} | {} |",
                g.count,
                fmt_pct(g.percent),
                fields.join(", "),
                examples.join("<br>")
            );
        }
        if s.triage_other > 0 {
            let _ = writeln!(o, "| {} | | (other groups) | |", s.triage_other);
        }
    }
    if !s.fields.is_empty() {
        let _ = writeln!(o, "\n### Top differing fields\n");
        let _ = writeln!(o, "| Field | Kind | Mismatches | Primary | Shadow | Request |");
        let _ = writeln!(o, "|---|---|---:|---|---|---|");
        for f in &s.fields {
            for (i, e) in f.examples.iter().enumerate() {
                let (name, kind, count) = if i == 0 {
                    (cell(&field_name(&f.field)), format!("{:?}", f.kind).to_lowercase(), f.count.to_string())
                } else {
                    (String::new(), String::new(), String::new())
                };
                let _ = writeln!(
                    o,
                    "| {name} | {kind} | {count} | {} | {} | {} {} ({}) |",
                    value(&e.primary),
                    value(&e.shadow),
                    cell(&e.method),
                    cell(&e.path),
                    cell(&e.request_id)
                );
            }
        }
        if s.fields_other > 0 {
            let _ = writeln!(o, "\n{} more fields not shown.", s.fields_other);
        }
    }
    if !s.noise.is_empty() {
        let _ = writeln!(o, "\n### Noise (differs between two answers of the primary)\n");
        let _ = writeln!(o, "| Field | Requests |");
        let _ = writeln!(o, "|---|---:|");
        for n in &s.noise {
            let _ = writeln!(o, "| {} | {} |", cell(&field_name(&n.name)), n.count);
        }
        if let Some(snippet) = &s.ignore_snippet {
            let _ =
                writeln!(o, "\nPaste into the route in routes.yaml:\n\n```yaml\n{}```", snippet.replace("```", "'''"));
        }
    }
    if !s.skipped.is_empty() {
        let _ = writeln!(o, "\n### Skipped\n");
        let _ = writeln!(o, "| Reason | Requests |");
        let _ = writeln!(o, "|---|---:|");
        for n in &s.skipped {
            let _ = writeln!(o, "| {} | {} |", cell(&n.name), n.count);
        }
    }
    if s.shadow_errors.count > 0 {
        let _ = writeln!(o, "\n### Shadow errors: {}\n", s.shadow_errors.count);
        let _ = writeln!(o, "| Reason / message | Requests |");
        let _ = writeln!(o, "|---|---:|");
        for n in &s.shadow_errors.by_reason {
            let _ = writeln!(o, "| **{}** | {} |", cell(&n.name), n.count);
        }
        for n in &s.shadow_errors.top_messages {
            let _ = writeln!(o, "| {} | {} |", cell(&n.name), n.count);
        }
    }
    let (p, sh) = (&s.latency.primary, &s.latency.shadow);
    if p.samples > 0 || sh.samples > 0 {
        let _ = writeln!(o, "\n### Latency\n");
        let _ = writeln!(o, "| | Samples | p50 | p95 | p99 |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        let _ = writeln!(o, "| primary | {} | {} | {} | {} |", p.samples, ms(p.p50), ms(p.p95), ms(p.p99));
        let _ = writeln!(o, "| shadow | {} | {} | {} | {} |", sh.samples, ms(sh.p50), ms(sh.p95), ms(sh.p99));
    }
}
