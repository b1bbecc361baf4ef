use serde_json::json;

use super::*;
use crate::record::Difference;
use crate::testkit::record;

#[test]
fn counts_rates_groups_and_verdicts() {
    let mut s = Summary::new();
    for i in 0..990 {
        s.add(&record(i, "users", Outcome::Match, vec![]));
    }
    for i in 990..1000 {
        s.add(&record(
            i,
            "users",
            Outcome::Mismatch,
            vec![
                (DiffKind::Body, "/items/3/etag", json!("a"), json!("b")),
                (DiffKind::Body, "/items/4/etag", json!("c"), json!("d")),
                (DiffKind::Header, "ETag", json!("x"), json!("y")),
            ],
        ));
    }
    let r = s.view(&ViewOptions::default());
    let users = &r.routes[0];
    assert_eq!(users.stats.counts.compared, 1000);
    let rate = users.stats.match_rate.as_ref().unwrap();
    assert!((rate.percent - 99.0).abs() < 1e-9);
    assert!(rate.ci95_low < 99.0 && rate.ci95_high > 99.0);
    assert!(!users.verdict.ready);
    assert_eq!(users.verdict.reasons, vec!["match rate 99.0% < 99.9%".to_string()]);
    let g = &users.stats.triage[0];
    assert_eq!(g.fields, vec!["/items/*/etag".to_string(), "header:etag".to_string()]);
    assert_eq!(g.count, 10);
    assert_eq!(g.examples.len(), MAX_EXAMPLES);
    let f = users.stats.fields.iter().find(|f| f.field == "/items/*/etag").unwrap();
    assert_eq!(f.count, 10, "a field counts once per request");
    assert_eq!(f.examples.len(), MAX_EXAMPLES);
    assert_eq!(users.stats.mismatches_by_kind.body, 10);
    assert_eq!(users.stats.mismatches_by_kind.header, 10);
    assert_eq!(users.stats.mismatches_by_kind.status, 0);
    let loose = ViewOptions { min_match: 98.0, min_samples: 1000, ..Default::default() };
    assert!(s.view(&loose).routes[0].verdict.ready);
    let strict = ViewOptions { min_match: 98.0, min_samples: 5000, ..Default::default() };
    assert_eq!(
        s.view(&strict).routes[0].verdict.reasons,
        vec!["not enough samples: 1000 < 5000, about 1h 7m more at the current rate (1.0 compared per second)"
            .to_string()]
    );
}

#[test]
fn distinct_fields_are_capped_with_the_rest_in_other() {
    let mut s = Summary::new();
    for i in 0..(MAX_DISTINCT as u64 + 50) {
        let pointer = format!("/f{i}");
        s.add(&record(i, "r", Outcome::Mismatch, vec![(DiffKind::Body, &pointer, json!(1), json!(2))]));
    }
    let agg = &s.routes["r"].endpoints["/api/users/{id}"][0].1;
    assert_eq!(agg.fields.map.len(), MAX_DISTINCT);
    assert_eq!(agg.fields.other, 50);
    assert_eq!(agg.groups.map.len(), MAX_DISTINCT);
    let view = s.view(&ViewOptions::default());
    assert_eq!(view.routes[0].stats.fields.len(), 20);
    assert_eq!(view.routes[0].stats.fields_other, (MAX_DISTINCT - 20 + 50) as u64);
    assert_eq!(view.routes[0].stats.triage_other, (MAX_DISTINCT - 20 + 50) as u64);
}

#[test]
fn endpoints_are_capped() {
    let mut s = Summary::new();
    for i in 0..(MAX_ENDPOINTS as u64 + 10) {
        let mut r = record(i, "r", Outcome::Match, vec![]);
        r.endpoint = format!("/e{i}");
        s.add(&r);
    }
    let route = &s.routes["r"];
    assert_eq!(route.pairs, MAX_ENDPOINTS + 1);
    assert_eq!(route.endpoints[OTHER_ENDPOINTS][0].1.matched, 10);
}

#[test]
fn long_values_are_clipped() {
    let mut s = Summary::new();
    let long = "x".repeat(10_000);
    s.add(&record(1, "r", Outcome::Mismatch, vec![(DiffKind::Body, "/a", json!(long), json!({"k": long}))]));
    let v = s.view(&ViewOptions::default());
    let e = &v.routes[0].stats.fields[0].examples[0];
    assert!(e.primary.as_str().unwrap().chars().count() <= MAX_VALUE_CHARS + 1);
    assert!(e.shadow.as_str().unwrap().ends_with('…'));
}

#[test]
fn merge_equals_adding_everything_to_one() {
    let mut one = Summary::new();
    let mut a = Summary::new();
    let mut b = Summary::new();
    for i in 0..300 {
        let result = if i % 7 == 0 { Outcome::Mismatch } else { Outcome::Match };
        let mut r = record(i, if i % 2 == 0 { "a" } else { "b" }, result, vec![]);
        if result == Outcome::Mismatch {
            r.diffs.push(Difference {
                kind: DiffKind::Status,
                pointer: "".into(),
                primary: json!(200),
                shadow: json!(500),
            });
        }
        r.noise = vec!["/updated_at".into(), "/items/2/etag".into()];
        one.add(&r);
        if i % 3 == 0 { &mut a } else { &mut b }.add(&r);
    }
    a.merge(b);
    let opts = ViewOptions::default();
    let (mut x, mut y) = (one.to_json(&opts), a.to_json(&opts));
    x["generated_at"] = Value::Null;
    y["generated_at"] = Value::Null;
    // Examples depend on the order records arrive in; everything else must agree.
    for v in [&mut x, &mut y] {
        for route in v["routes"].as_array_mut().unwrap() {
            for f in route["fields"].as_array_mut().unwrap() {
                f["examples"] = Value::Null;
            }
            for g in route["triage"].as_array_mut().unwrap() {
                g["examples"] = Value::Null;
            }
            for e in route["endpoints"].as_array_mut().unwrap() {
                for f in e["fields"].as_array_mut().unwrap() {
                    f["examples"] = Value::Null;
                }
                for g in e["triage"].as_array_mut().unwrap() {
                    g["examples"] = Value::Null;
                }
            }
        }
    }
    assert_eq!(x, y);
    assert_eq!(x["routes"][0]["noise"][1]["name"], "/updated_at");
    assert_eq!(x["routes"][0]["ignore_snippet"], "shadow:\n  ignore: [\"/items/*/etag\", \"/updated_at\"]\n");
}

#[test]
fn timeline_widens_and_stays_bounded() {
    let mut t = Timeline::default();
    for s in 0..10_000i64 {
        t.add(s * 1000, if s % 10 != 0 { MATCHED } else { MISMATCHED });
    }
    assert!(t.buckets.len() <= MAX_TIME_BUCKETS);
    let width = report_width(t.width_s, 0, 9_999_000, 50);
    let v = t.view(width, 0, 9_999_000);
    assert!(v.buckets.len() <= 50 && v.buckets.len() >= 15, "{}", v.buckets.len());
    assert_eq!(v.bucket_seconds, 300);
    let total: u64 = v.buckets.iter().map(|b| b.compared).sum();
    assert_eq!(total, 10_000);
    assert!((v.buckets[3].match_percent.unwrap() - 90.0).abs() < 1.0);
}

#[test]
fn every_route_has_the_same_buckets_over_the_whole_report() {
    let mut s = Summary::new();
    // "early" runs for the first 10 minutes, "late" for the last 2 of 60.
    for i in 0..600 {
        s.add(&record(i, "early", Outcome::Match, vec![]));
    }
    for i in 3480..3600 {
        s.add(&record(i, "late", Outcome::Match, vec![]));
        let mut e = record(i, "late", Outcome::ShadowError, vec![]);
        e.reason = Some("shadow_timeout".into());
        s.add(&e);
    }
    let v = s.view(&ViewOptions::default());
    let (early, late) = (&v.routes[0].timeline, &v.routes[1].timeline);
    assert_eq!(early.bucket_seconds, late.bucket_seconds);
    assert_eq!(early.bucket_seconds, 300, "one hour in at most 50 round buckets");
    assert_eq!(early.buckets.len(), late.buckets.len());
    assert_eq!(early.buckets[0].start, late.buckets[0].start);
    assert_eq!(early.end, late.end, "both run to the end of the report");
    assert!(early.buckets.last().unwrap().match_percent.is_none(), "no traffic at the end: a gap, not a shorter axis");
    let errors: u64 = late.buckets.iter().map(|b| b.shadow_error).sum();
    assert_eq!(errors, 120, "shadow errors are on the timeline");
}

#[test]
fn too_few_samples_says_how_long_until_enough_at_the_current_rate() {
    let mut s = Summary::new();
    // 367 compared requests in 3660 s (6 per minute): 633 more take 6313 s.
    for i in 0..367 {
        s.add(&record(i * 10, "r", Outcome::Match, vec![]));
    }
    let v = s.view(&ViewOptions::default());
    let verdict = &v.routes[0].verdict;
    assert_eq!(
        verdict.reasons,
        vec!["not enough samples: 367 < 1000, about 1h 45m more at the current rate (6.0 compared per minute)"]
    );
    assert_eq!(verdict.samples_eta_seconds, Some(6313));
    assert_eq!(about(30), "under a minute");
    assert_eq!(about(3 * 86_400 + 7000), "3days 2h");
    assert_eq!(pace(0.5), "30 compared per minute");
    let mut one = Summary::new();
    one.add(&record(1, "r", Outcome::Skipped, vec![]));
    assert_eq!(
        one.view(&ViewOptions::default()).routes[0].verdict.reasons,
        vec!["not enough samples: 0 < 1000, none compared yet"]
    );
}

#[test]
fn instances_and_config_versions_are_counted() {
    let mut s = Summary::new();
    for i in 0..5 {
        let mut r = record(i, "r", Outcome::Match, vec![]);
        r.instance = Some(if i < 3 { "pod-a" } else { "pod-b" }.into());
        r.config_hash = Some("c0ffee".into());
        s.add(&r);
    }
    s.add(&record(9, "r", Outcome::Match, vec![]));
    let v = s.to_json(&ViewOptions::default());
    assert_eq!(
        v["instances"],
        json!([{"name": "pod-a", "count": 3}, {"name": "pod-b", "count": 2}, {"name": UNKNOWN, "count": 1}])
    );
    assert_eq!(v["config_hashes"], json!([{"name": "c0ffee", "count": 5}, {"name": UNKNOWN, "count": 1}]));
}

#[test]
fn shadow_errors_and_skips_are_counted_by_reason() {
    let mut s = Summary::new();
    for i in 0..2000 {
        s.add(&record(i, "r", Outcome::Match, vec![]));
    }
    for i in 0..10 {
        let mut r = record(i, "r", Outcome::ShadowError, vec![]);
        r.reason = Some(crate::record::reason::SHADOW_TIMEOUT.into());
        r.shadow.error = Some("timed out after 5s".into());
        s.add(&r);
        let mut r = record(i, "r", Outcome::Skipped, vec![]);
        r.reason = Some(crate::record::reason::TOO_LARGE.into());
        s.add(&r);
    }
    let v = s.view(&ViewOptions::default());
    let r = &v.routes[0];
    assert_eq!(r.stats.shadow_errors.count, 10);
    assert_eq!(r.stats.shadow_errors.by_reason[0].name, "shadow_timeout");
    assert_eq!(r.stats.shadow_errors.top_messages[0].name, "timed out after 5s");
    assert_eq!(r.stats.skipped[0].name, "too_large");
    assert_eq!(r.stats.skipped[0].count, 10);
    assert!(!r.verdict.ready);
    assert!(r.verdict.reasons[0].starts_with("shadow errors 0.5"), "{:?}", r.verdict.reasons);
    assert_eq!(r.stats.latency.primary.samples, 2020);
    assert_eq!(r.stats.latency.shadow.samples, 2010);
}

#[test]
fn snippet_splits_body_and_headers() {
    let s = ignore_snippet(["/a/0/b", "header:etag", "x-trace", "", "status"].into_iter()).unwrap();
    assert_eq!(s, "shadow:\n  ignore: [\"/a/*/b\"]\n  ignore_headers: [\"etag\", \"x-trace\"]\n");
    assert_eq!(ignore_snippet(std::iter::empty()), None);
}

#[test]
fn percentages_never_round_up_to_100() {
    assert_eq!(fmt_pct(99.96), "99.96");
    assert_eq!(fmt_pct(100.0), "100.0");
    assert_eq!(fmt_pct(97.24), "97.2");
    assert_eq!(fmt_pct(99.9999), "99.9999");
}
