//! Where every source's records end up: the [`Collector`] applies the
//! query, counts a record given twice once (by its `id`), judges it again
//! with the fleet's noise and adds it to the summary; [`gather`] runs the
//! two passes over all sources (noise evidence first, then the records).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use strangler_evidence::noise::FleetNoise;
use strangler_evidence::record::DiffRecord;
use strangler_evidence::summary::Summary;

use super::query::Query;
use super::source::{Progress, Source};

/// Shards of the id set, so that readers on several threads rarely wait.
const SHARDS: usize = 16;

/// The ids of the records counted so far, shared by the readers of all
/// sources: 16 bytes per record (a UUID as a `u128`; any other id hashed).
#[derive(Debug)]
pub struct SeenIds {
    shards: Vec<Mutex<HashSet<u128>>>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl SeenIds {
    /// True the first time `id` is given, false after.
    pub fn first_time(&self, id: &str) -> bool {
        let key = id_key(id);
        let shard = ((key as u64) ^ ((key >> 64) as u64)) as usize % SHARDS;
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner()).insert(key)
    }
}

/// A record id as 128 bits: the UUID itself, or the first 16 bytes of the
/// SHA-256 of an id that is not a UUID.
pub fn id_key(id: &str) -> u128 {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            let digest = Sha256::digest(id.as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(bytes)
        }
    }
}

/// Takes the records of one source (on one thread) into a summary.
pub struct Collector<'a> {
    query: &'a Query,
    noise: &'a FleetNoise,
    seen: &'a SeenIds,
    /// What was counted so far (merged with the other sources' at the end).
    pub summary: Summary,
}

impl<'a> Collector<'a> {
    pub fn new(query: &'a Query, noise: &'a FleetNoise, seen: &'a SeenIds) -> Collector<'a> {
        Collector { query, noise, seen, summary: Summary::default() }
    }

    /// The query every record is checked against (a source may push it down).
    pub fn query(&self) -> &Query {
        self.query
    }

    /// One record read: counted unless the query leaves it out or its id
    /// was already counted; a mismatch whose every difference is noise for
    /// its route and endpoint counts as a match.
    pub fn add(&mut self, mut record: DiffRecord) {
        let inputs = &mut self.summary.inputs;
        inputs.lines += 1;
        if !self.query.keeps(&record) {
            inputs.filtered_out += 1;
            return;
        }
        if let Some(id) = &record.id {
            if !self.seen.first_time(id) {
                inputs.duplicates_ignored += 1;
                return;
            }
        }
        let rejudged = self.noise.rejudge(&mut record);
        self.summary.add_judged(&record, rejudged);
    }

    /// One record that could not be read (the source reports why).
    pub fn corrupt(&mut self) {
        self.summary.inputs.lines += 1;
        self.summary.inputs.corrupt_lines += 1;
    }
}

/// Reads every source twice, each on its own thread up to the core count:
/// first the noise evidence of the whole data set, then the records, judged
/// with it. The summary lists the sources in the order given.
pub fn gather(sources: &[Box<dyn Source>], query: &Query, progress: &Progress) -> anyhow::Result<Summary> {
    progress.pass("noise evidence");
    let mut noise = FleetNoise::default();
    for share in in_parallel(sources.len(), |i| sources[i].read_noise(query, progress)) {
        noise.merge(share?);
    }
    progress.pass("records");
    let seen = SeenIds::default();
    let summaries = in_parallel(sources.len(), |i| -> anyhow::Result<Summary> {
        let mut collector = Collector::new(query, &noise, &seen);
        sources[i].read_records(&mut collector, progress)?;
        collector.summary.inputs.files.push(sources[i].name().to_string());
        Ok(collector.summary)
    });
    progress.finish();
    let mut summary = Summary::default();
    for s in summaries {
        summary.merge(s?);
    }
    Ok(summary)
}

/// `f(0)`, ..., `f(n - 1)` on up to one thread per core; results in order.
fn in_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1).min(n).max(1);
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.expect("every index ran")).collect()
}
