use serde_json::json;
use strangler_evidence::record::{DiffKind, DiffRecord, Difference, Outcome};
use strangler_evidence::summary::{Summary, ViewOptions};
use strangler_evidence::testkit::record;

use strangler_evidence::noise::FleetNoise;

use super::collect::{Collector, SeenIds};
use super::query::Query;
use super::{collect, html, input, markdown, source};

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
fn corrupt_lines_are_reported_with_their_line_number() {
    let good = serde_json::to_string(&record(1, "r", Outcome::Match, vec![])).unwrap();
    let text = format!("{good}\n\n{{broken\n{good}\n{}", &good[..20]);
    let (query, noise, seen) = (Query::default(), FleetNoise::default(), SeenIds::default());
    let mut c = Collector::new(&query, &noise, &seen);
    let mut errors = Vec::new();
    input::read_log("log.jsonl", &mut text.as_bytes(), &mut c, &mut |e| errors.push(e)).unwrap();
    assert_eq!(c.summary.records(), 2);
    assert_eq!(c.summary.inputs.corrupt_lines, 2);
    assert!(errors[0].starts_with("log.jsonl:3: invalid record: "), "{errors:?}");
    assert!(errors[1].starts_with("log.jsonl:5: invalid record: "), "{errors:?}");
}

/// Writes records as a JSON-lines file in `dir`.
fn log_file(dir: &std::path::Path, name: &str, records: &[DiffRecord]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn gather(files: &[std::path::PathBuf], query: &Query) -> Summary {
    let sources = source::open_all(files, &[]).unwrap();
    collect::gather(&sources, query, &source::Progress::default()).unwrap()
}

fn with_id(mut r: DiffRecord, i: u64) -> DiffRecord {
    r.id = Some(format!("0190a6b4-0000-7000-8000-{i:012}"));
    r
}

#[test]
fn overlapping_logs_count_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<DiffRecord> = (0..100).map(|i| with_id(record(i, "r", Outcome::Match, vec![]), i)).collect();
    // Two exports that overlap by 40 records, and 5 old records without an id, given twice.
    let old: Vec<DiffRecord> = (200..205).map(|i| record(i, "r", Outcome::Match, vec![])).collect();
    let a = log_file(dir.path(), "a.jsonl", &[&all[..70], &old[..]].concat());
    let b = log_file(dir.path(), "b.jsonl", &[&all[30..], &old[..]].concat());
    let s = gather(&[a, b], &Query::default());
    assert_eq!(s.records(), 100 + 10, "records without an id are counted as before");
    assert_eq!(s.inputs.duplicates_ignored, 40);
    assert_eq!(s.inputs.lines, 70 + 70 + 10);
}

#[test]
fn ids_that_are_not_uuids_are_still_told_apart() {
    let seen = SeenIds::default();
    assert!(seen.first_time("job-1"));
    assert!(seen.first_time("job-2"));
    assert!(!seen.first_time("job-1"));
    assert!(seen.first_time("0190a6b4-0000-7000-8000-000000000001"));
    assert!(!seen.first_time("0190A6B4-0000-7000-8000-000000000001"), "a UUID is the same in either case");
}

#[test]
fn noise_seen_by_any_instance_is_noise_for_every_record_of_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let nonce = |i: u64| vec![(DiffKind::Body, "/nonce", json!(format!("p{i}")), json!(format!("s{i}")))];
    let mut early = Vec::new();
    // Instance a: 50 mismatches on /nonce before it learned the noise, then matches that carry it.
    for i in 0..50 {
        let mut r = with_id(record(i, "r", Outcome::Mismatch, nonce(i)), i);
        r.instance = Some("a".into());
        early.push(r);
    }
    for i in 50..60 {
        let mut r = with_id(record(i, "r", Outcome::Match, vec![]), i);
        r.instance = Some("a".into());
        r.noise = vec!["/nonce".into()];
        early.push(r);
    }
    // Instance b never probed: every answer a mismatch on /nonce; two also differ in the status.
    let mut b = Vec::new();
    for i in 100..140 {
        let mut r = with_id(record(i, "r", Outcome::Mismatch, nonce(i)), i);
        r.instance = Some("b".into());
        if i < 102 {
            r.diffs.push(Difference {
                kind: DiffKind::Status,
                pointer: "".into(),
                primary: json!(200),
                shadow: json!(500),
            });
        }
        b.push(r);
    }
    // Another endpoint of the same route learned nothing: its /nonce differences stay mismatches.
    let mut elsewhere = with_id(record(200, "r", Outcome::Mismatch, nonce(200)), 200);
    elsewhere.endpoint = "/api/users".into();
    elsewhere.instance = Some("b".into());
    b.push(elsewhere);
    let files = [log_file(dir.path(), "a.jsonl", &early), log_file(dir.path(), "b.jsonl", &b)];
    let v = gather(&files, &Query::default()).view(&ViewOptions::default());
    let r = &v.routes[0];
    assert_eq!(r.stats.counts.compared, 101);
    assert_eq!(r.stats.counts.mismatched, 3, "the two with a status difference and the other endpoint's");
    assert_eq!(r.stats.rejudged_as_match, 88);
    let users = r.endpoints.iter().find(|e| e.endpoint == "/api/users/{id}").unwrap();
    assert_eq!(users.stats.triage.len(), 1);
    assert_eq!(users.stats.triage[0].fields, vec!["status".to_string()], "noise is no longer listed as differing");
    assert_eq!(users.stats.noise[0].name, "/nonce");

    // Only instance b's records, judged with the whole fleet's noise.
    let q = Query { instances: vec!["b".into()], ..Query::default() };
    let v = gather(&files, &q).view(&ViewOptions::default());
    assert_eq!(v.routes[0].stats.counts.compared, 41);
    assert_eq!(v.routes[0].stats.counts.mismatched, 3);
}

#[test]
fn the_noise_pass_reads_only_lines_that_carry_noise() {
    let mut carrying = record(1, "r", Outcome::Match, vec![]);
    carrying.noise = vec!["/a".into()];
    let mut nested = record(2, "r", Outcome::Mismatch, vec![(DiffKind::Body, "/x", json!({"noise": []}), json!(1))]);
    nested.noise = vec!["/b".into()];
    let plain = record(3, "r", Outcome::Match, vec![]);
    let spaced = r#"{"route": "r", "endpoint": "/api/users/{id}", "noise": ["/c"]}"#;
    let text = [
        serde_json::to_string(&carrying).unwrap(),
        serde_json::to_string(&nested).unwrap(),
        serde_json::to_string(&plain).unwrap(),
        spaced.to_string(),
        "{broken".to_string(),
    ]
    .join("\n");
    let mut noise = FleetNoise::default();
    input::read_noise(&mut text.as_bytes(), &Query::default(), &mut noise).unwrap();
    let keys: Vec<&str> = noise.keys("r", "/api/users/{id}").unwrap().iter().map(String::as_str).collect();
    assert_eq!(keys, ["/a", "/b", "/c"]);
    let mut other = FleetNoise::default();
    let q = Query { routes: vec!["s".into()], ..Query::default() };
    input::read_noise(&mut text.as_bytes(), &q, &mut other).unwrap();
    assert!(other.keys("r", "/api/users/{id}").is_none(), "only the query's routes");
}
