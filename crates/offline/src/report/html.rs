//! The report as one self-contained HTML file: inline CSS and SVG, no
//! JavaScript, no network. Every value from traffic is escaped.

use std::fmt::Write;

use serde_json::Value;
use strangler_evidence::summary::stats::Quantiles;
use strangler_evidence::summary::{fmt_pct, NameCount, Report, RouteView, StatsView};

use super::chart;
use super::markdown::field_name;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Null => "null (absent)".to_string(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

const CSS: &str = r#"
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e4e7ec;--ok:#12805c;--okbg:#e3f6ee;--bad:#b42318;--badbg:#fdecea;--warn:#b54708;--warnbg:#fef4e6;--acc:#3559e0;--prim:#475467;--shad:#7a5af8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:20px;margin:0}
h3{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--mute);margin:22px 0 8px}
a{color:var(--acc);text-decoration:none}
.sub{color:var(--mute);font-size:13px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:10px;margin-top:14px}
.kpi{background:var(--bg);border-radius:8px;padding:10px 12px}
.kpi b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.kpi span{color:var(--mute);font-size:12px}
.kpi.bad b{color:var(--bad)}
.badge{display:inline-block;padding:3px 10px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
.badge.ok{background:var(--okbg);color:var(--ok)}
.badge.bad{background:var(--badbg);color:var(--bad)}
.route-head{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.reasons{margin:8px 0 0;padding:0;list-style:none;color:var(--bad)}
.reasons li:before{content:"✕ ";font-weight:700}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px;background:#fafbfc}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
code.f{background:#eef2ff;color:#2b3fa8;padding:1px 6px;border-radius:4px;margin:1px 2px;display:inline-block}
.bar{height:6px;background:var(--line);border-radius:3px;min-width:60px}
.bar i{display:block;height:6px;border-radius:3px;background:var(--bad)}
.ex{display:grid;grid-template-columns:1fr 1fr;gap:8px;margin:6px 0 10px}
.ex pre{margin:0;padding:8px 10px;border-radius:6px;white-space:pre-wrap;word-break:break-all;max-height:180px;overflow:auto}
.ex .p{background:#f2f4f7;border-left:3px solid var(--prim)}
.ex .s{background:#f4f0ff;border-left:3px solid var(--shad)}
.ex label{font-size:11px;color:var(--mute);display:block;margin-bottom:2px}
.req{font-size:12px;color:var(--mute)}
.field{border-top:1px solid var(--line);padding-top:10px;margin-top:10px}
.field:first-of-type{border-top:0}
pre.snip{background:#101828;color:#e4e7ec;padding:12px 14px;border-radius:8px;overflow:auto}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.muted{color:var(--mute)}
svg text{font:11px -apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:var(--mute)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px;vertical-align:-1px}
footer{color:var(--mute);font-size:12px;margin-top:30px}
"#;

pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>strangler shadow report</title><style>{CSS}</style></head><body><main>\n"
    );
    // Header
    let t = &r.totals;
    let overall = match t.compared {
        0 => "–".to_string(),
        n => format!("{}%", fmt_pct(t.matched as f64 * 100.0 / n as f64)),
    };
    let _ = writeln!(
        o,
        "<header class=\"card\"><div class=\"route-head\"><h1>Shadow traffic report</h1>{}</div>\
         <div class=\"sub\">Generated {} · {} source(s): {} · span {} → {} · thresholds: match rate ≥ {}% over ≥ {} compared requests</div>\
         <div class=\"sub\">{}</div>\
         <div class=\"kpis\">{}{}{}{}{}{}{}</div></header>",
        badge(r.ready, if r.ready { "all routes ready" } else { "not ready" }),
        esc(&r.generated_at),
        r.inputs.files.len(),
        r.inputs.files.iter().map(|f| format!("<code>{}</code>", esc(f))).collect::<Vec<_>>().join(", "),
        esc(r.span.first.as_deref().unwrap_or("–")),
        esc(r.span.last.as_deref().unwrap_or("–")),
        r.options.min_match,
        r.options.min_samples,
        provenance(r),
        kpi("records", &t.sampled.to_string(), false),
        kpi("compared", &t.compared.to_string(), false),
        kpi("match rate", &overall, false),
        kpi("mismatches", &t.mismatched.to_string(), t.mismatched > 0),
        kpi("shadow errors", &t.shadow_error.to_string(), t.shadow_error > 0),
        kpi("skipped", &t.skipped.to_string(), false),
        kpi("corrupt lines", &r.inputs.corrupt_lines.to_string(), r.inputs.corrupt_lines > 0),
    );
    // Overview
    let _ = write!(
        o,
        "<section class=\"card\"><h3 style=\"margin-top:0\">Routes</h3><table><tr><th>Route</th><th>Verdict</th>\
         <th class=\"n\">Compared</th><th class=\"n\">Match rate</th><th class=\"n\">95% CI</th><th class=\"n\">Mismatches</th>\
         <th class=\"n\">Shadow errors</th><th class=\"n\">Skipped</th></tr>"
    );
    for (i, route) in r.routes.iter().enumerate() {
        let s = &route.stats;
        let (rate, ci) = rate_cells(s);
        let _ = write!(
            o,
            "<tr><td><a href=\"#route-{i}\"><b>{}</b></a></td><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{rate}</td>\
             <td class=\"n\">{ci}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&route.route),
            badge(route.verdict.ready, if route.verdict.ready { "ready" } else { "not ready" }),
            if route.verdict.ready {
                String::new()
            } else {
                format!("<div class=\"req\">{}</div>", esc(&route.verdict.reasons.join("; ")))
            },
            s.counts.compared,
            s.counts.mismatched,
            s.counts.shadow_error,
            s.counts.skipped
        );
    }
    if r.routes.is_empty() {
        o.push_str("<tr><td colspan=\"8\" class=\"muted\">No records.</td></tr>");
    }
    o.push_str("</table></section>\n");
    for (i, route) in r.routes.iter().enumerate() {
        route_section(&mut o, i, route, r.options.min_match);
    }
    let _ = writeln!(
        o,
        "<footer>strangler report · {} records read, {} corrupt, {} filtered out, {} duplicates ignored · values are shown as recorded (redacted fields stay redacted)</footer>\
         </main></body></html>",
        r.inputs.lines, r.inputs.corrupt_lines, r.inputs.filtered_out, r.inputs.duplicates_ignored
    );
    o
}

/// Which replicas and config versions wrote the records, and what was not counted twice.
fn provenance(r: &Report) -> String {
    let list = |items: &[NameCount]| {
        items.iter().map(|n| format!("<code>{}</code> {}", esc(&n.name), n.count)).collect::<Vec<_>>().join(", ")
    };
    let rejudged: u64 = r.routes.iter().map(|route| route.stats.rejudged_as_match).sum();
    format!(
        "Instances ({}): {} · config versions ({}): {} · duplicate records ignored: {} · mismatches judged match \
         because every differing field is noise the fleet saw: {}",
        r.instances.len(),
        list(&r.instances),
        r.config_hashes.len(),
        list(&r.config_hashes),
        r.inputs.duplicates_ignored,
        rejudged
    )
}

fn badge(ok: bool, text: &str) -> String {
    format!(
        "<span class=\"badge {}\">{} {}</span>",
        if ok { "ok" } else { "bad" },
        if ok { "✓" } else { "✕" },
        esc(text)
    )
}

fn kpi(label: &str, value: &str, bad: bool) -> String {
    format!(
        "<div class=\"kpi{}\"><b>{}</b><span>{}</span></div>",
        if bad { " bad" } else { "" },
        esc(value),
        esc(label)
    )
}

fn rate_cells(s: &StatsView) -> (String, String) {
    match &s.match_rate {
        Some(r) => (format!("{}%", fmt_pct(r.percent)), format!("{}–{}%", fmt_pct(r.ci95_low), fmt_pct(r.ci95_high))),
        None => ("–".into(), "–".into()),
    }
}

fn route_section(o: &mut String, i: usize, route: &RouteView, min_match: f64) {
    let s = &route.stats;
    let (rate, ci) = rate_cells(s);
    let _ = write!(
        o,
        "<section class=\"card\" id=\"route-{i}\"><div class=\"route-head\"><h2>{}</h2>{}</div>",
        esc(&route.route),
        badge(route.verdict.ready, if route.verdict.ready { "ready to cut over" } else { "not ready" })
    );
    if !route.verdict.ready {
        o.push_str("<ul class=\"reasons\">");
        for reason in &route.verdict.reasons {
            let _ = write!(o, "<li>{}</li>", esc(reason));
        }
        o.push_str("</ul>");
    }
    let k = &s.mismatches_by_kind;
    let _ = write!(
        o,
        "<div class=\"kpis\">{}{}{}{}{}{}</div>",
        kpi("compared", &s.counts.compared.to_string(), false),
        kpi(
            &if s.rejudged_as_match > 0 {
                format!("match rate (95% CI {ci}; {} judged match by fleet noise)", s.rejudged_as_match)
            } else {
                format!("match rate (95% CI {ci})")
            },
            &rate,
            false
        ),
        kpi(
            &format!("mismatches (status {} · header {} · body {})", k.status, k.header, k.body),
            &s.counts.mismatched.to_string(),
            s.counts.mismatched > 0
        ),
        kpi("shadow errors", &s.counts.shadow_error.to_string(), s.counts.shadow_error > 0),
        kpi("skipped", &s.counts.skipped.to_string(), false),
        kpi("noisy responses", &s.noise.iter().map(|n| n.count).max().unwrap_or(0).to_string(), false),
    );
    chart::render(o, &route.timeline, min_match);
    stats_body(o, s);
    if route.endpoints.len() > 1 {
        o.push_str(
            "<h3>Endpoints</h3><table><tr><th>Endpoint</th><th class=\"n\">Compared</th><th class=\"n\">Match rate</th>\
             <th class=\"n\">95% CI</th><th class=\"n\">Mismatches</th><th>Top differing field</th><th class=\"n\">Errors</th>\
             <th class=\"n\">Skipped</th></tr>",
        );
        for e in &route.endpoints {
            let (rate, ci) = rate_cells(&e.stats);
            let _ = write!(
                o,
                "<tr><td><code>{} {}</code></td><td class=\"n\">{}</td><td class=\"n\">{rate}</td><td class=\"n\">{ci}</td>\
                 <td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&e.method),
                esc(&e.endpoint),
                e.stats.counts.compared,
                e.stats.counts.mismatched,
                e.stats.fields.first().map(|f| format!("<code class=\"f\">{}</code>", esc(&field_name(&f.field)))).unwrap_or_default(),
                e.stats.counts.shadow_error,
                e.stats.counts.skipped
            );
        }
        o.push_str("</table>");
    }
    o.push_str("</section>\n");
}

fn stats_body(o: &mut String, s: &StatsView) {
    if !s.triage.is_empty() {
        o.push_str(
            "<h3>Triage — mismatches grouped by the exact set of differing fields</h3><table><tr><th class=\"n\">Mismatches</th>\
             <th style=\"width:120px\">Share</th><th>Differing fields</th><th>Example requests</th></tr>",
        );
        for g in &s.triage {
            let fields: String =
                g.fields.iter().map(|f| format!("<code class=\"f\">{}</code>", esc(&field_name(f)))).collect();
            let examples: Vec<String> = g
                .examples
                .iter()
                .map(|e| {
                    format!("<div class=\"req\">{} {} · {}</div>", esc(&e.method), esc(&e.path), esc(&e.request_id))
                })
                .collect();
            let _ = write!(
                o,
                "<tr><td class=\"n\"><b>{}</b></td><td><div class=\"req\">{}%</div><div class=\"bar\"><i style=\"width:{:.1}%\"></i></div></td><td>{fields}</td><td>{}</td></tr>",
                g.count,
                fmt_pct(g.percent),
                g.percent.clamp(0.0, 100.0),
                examples.join("")
            );
        }
        if s.triage_other > 0 {
            let _ = write!(
                o,
                "<tr><td class=\"n\">{}</td><td></td><td class=\"muted\">(other groups)</td><td></td></tr>",
                s.triage_other
            );
        }
        o.push_str("</table>");
    }
    if !s.fields.is_empty() {
        o.push_str("<h3>Top differing fields — primary vs shadow</h3>");
        for f in &s.fields {
            let _ = write!(
                o,
                "<div class=\"field\"><code class=\"f\">{}</code> <span class=\"muted\">{} · differs in <b>{}</b> mismatches ({}%)</span>",
                esc(&field_name(&f.field)),
                format!("{:?}", f.kind).to_lowercase(),
                f.count,
                fmt_pct(f.percent)
            );
            for e in &f.examples {
                let _ = write!(
                    o,
                    "<div class=\"ex\"><div><label>primary</label><pre class=\"p\">{}</pre></div><div><label>shadow</label><pre class=\"s\">{}</pre></div></div>\
                     <div class=\"req\" style=\"margin-top:-6px;margin-bottom:8px\">{} {} · <code>{}</code> · {} · {}</div>",
                    esc(&value_text(&e.primary)),
                    esc(&value_text(&e.shadow)),
                    esc(&e.method),
                    esc(&e.path),
                    esc(&e.pointer),
                    esc(&e.request_id),
                    esc(&e.ts)
                );
            }
            o.push_str("</div>");
        }
        if s.fields_other > 0 {
            let _ = write!(o, "<p class=\"muted\">{} more fields not shown.</p>", s.fields_other);
        }
    }
    if !s.noise.is_empty() {
        o.push_str("<h3>Noise — fields that differ between two answers of the primary itself</h3><div class=\"cols\"><table><tr><th>Field</th><th class=\"n\">Requests</th></tr>");
        for n in &s.noise {
            let _ = write!(
                o,
                "<tr><td><code class=\"f\">{}</code></td><td class=\"n\">{}</td></tr>",
                esc(&field_name(&n.name)),
                n.count
            );
        }
        if s.noise_other > 0 {
            let _ = write!(o, "<tr><td class=\"muted\">(other)</td><td class=\"n\">{}</td></tr>", s.noise_other);
        }
        o.push_str("</table><div>");
        if let Some(snippet) = &s.ignore_snippet {
            let _ = write!(
                o,
                "<div class=\"req\">Paste under the route in routes.yaml:</div><pre class=\"snip\">{}</pre>",
                esc(snippet)
            );
        }
        o.push_str("</div></div>");
    }
    if !s.skipped.is_empty() || s.shadow_errors.count > 0 {
        o.push_str("<div class=\"cols\"><div><h3>Skipped</h3>");
        if s.skipped.is_empty() {
            o.push_str("<p class=\"muted\">None.</p>");
        } else {
            o.push_str("<table><tr><th>Reason</th><th class=\"n\">Requests</th></tr>");
            for n in &s.skipped {
                let _ = write!(o, "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>", esc(&n.name), n.count);
            }
            o.push_str("</table>");
        }
        let _ = write!(o, "</div><div><h3>Shadow errors ({})</h3>", s.shadow_errors.count);
        if s.shadow_errors.count == 0 {
            o.push_str("<p class=\"muted\">None.</p>");
        } else {
            o.push_str("<table><tr><th>Reason / message</th><th class=\"n\">Requests</th></tr>");
            for n in &s.shadow_errors.by_reason {
                let _ = write!(o, "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>", esc(&n.name), n.count);
            }
            for n in &s.shadow_errors.top_messages {
                let _ = write!(o, "<tr><td class=\"req\">{}</td><td class=\"n\">{}</td></tr>", esc(&n.name), n.count);
            }
            o.push_str("</table>");
        }
        o.push_str("</div></div>");
    }
    latency(o, &s.latency.primary, &s.latency.shadow);
}

fn latency(o: &mut String, p: &Quantiles, s: &Quantiles) {
    if p.samples == 0 && s.samples == 0 {
        return;
    }
    let max = [p.p99, s.p99].iter().flatten().fold(0.0f64, |a, b| a.max(*b)).max(0.001);
    o.push_str("<h3>Latency — primary vs shadow</h3><table><tr><th></th><th class=\"n\">Samples</th>");
    for q in ["p50", "p95", "p99"] {
        let _ = write!(o, "<th class=\"n\">{q}</th>");
    }
    o.push_str("<th style=\"width:40%\">p50 / p95 / p99</th></tr>");
    for (name, q, color) in [("primary", p, "var(--prim)"), ("shadow", s, "var(--shad)")] {
        let cell = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "–".into());
        let w = |v: Option<f64>| v.map(|v| v / max * 100.0).unwrap_or(0.0);
        let _ = write!(
            o,
            "<tr><td><b>{name}</b></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td><svg width=\"100%\" height=\"14\" viewBox=\"0 0 100 14\" preserveAspectRatio=\"none\">\
             <rect x=\"0\" y=\"3\" width=\"{:.2}\" height=\"8\" fill=\"{color}\" opacity=\".25\"/>\
             <rect x=\"0\" y=\"3\" width=\"{:.2}\" height=\"8\" fill=\"{color}\" opacity=\".5\"/>\
             <rect x=\"0\" y=\"3\" width=\"{:.2}\" height=\"8\" fill=\"{color}\"/></svg></td></tr>",
            q.samples,
            cell(q.p50),
            cell(q.p95),
            cell(q.p99),
            w(q.p99),
            w(q.p95),
            w(q.p50),
        );
    }
    o.push_str("</table>");
}
