use serde_json::json;
use strangler_evidence::record::{DiffKind, Outcome};
use strangler_evidence::summary::{Summary, ViewOptions};
use strangler_evidence::testkit::record;

use super::{html, input, markdown};

#[test]
fn html_escapes_everything_from_traffic() {
    let mut s = Summary::new();
    let mut r = record(
        1,
        "<b>r</b>",
        Outcome::Mismatch,
        vec![(DiffKind::Body, "/<i>", json!("<script>alert(1)</script>"), json!("\"'&"))],
    );
    r.path = "/x/<script>".into();
    r.request_id = "<img src=x>".into();
    s.add(&r);
    let html = html::render(&s.view(&ViewOptions::default()));
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<img"));
    assert!(!html.contains("<b>r</b>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let md = markdown::render(&s.view(&ViewOptions::default()));
    assert!(!md.contains("<script>"), "{md}");
}

#[test]
fn since_accepts_times_and_durations() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(10_000);
    assert_eq!(input::parse_since("2h", now), Ok((10_000 - 7200) * 1000));
    assert_eq!(input::parse_since("1970-01-01T00:00:05Z", now), Ok(5000));
    assert!(input::parse_since("soon", now).is_err());
}

#[test]
fn corrupt_lines_are_reported_with_their_line_number() {
    let good = serde_json::to_string(&record(1, "r", Outcome::Match, vec![])).unwrap();
    let text = format!("{good}\n\n{{broken\n{good}\n{}", &good[..20]);
    let mut s = Summary::new();
    let mut errors = Vec::new();
    input::read_log("log.jsonl", &mut text.as_bytes(), &input::Filter::default(), &mut s, &mut |e| errors.push(e))
        .unwrap();
    assert_eq!(s.records(), 2);
    assert_eq!(s.inputs.corrupt_lines, 2);
    assert!(errors[0].starts_with("log.jsonl:3: invalid record: "), "{errors:?}");
    assert!(errors[1].starts_with("log.jsonl:5: invalid record: "), "{errors:?}");
}
