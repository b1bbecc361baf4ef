//! `--from postgres://…`: the fleet's store (`strangler-store`) as a report
//! [`Source`]. Its noise evidence is the store's noise table (every pointer
//! any replica learned, so every pointer a stored record lists as noise);
//! its records stream from SQL with the query pushed down (routes, time
//! span, instances), and the collector checks them again as it does a file's.

use strangler_evidence::noise::FleetNoise;

use super::collect::Collector;
use super::query::Query;
use super::source::{Progress, Source};

/// A PostgreSQL store, by its URL (password from the URL or `PGPASSWORD`).
pub struct StoreSource {
    url: String,
    /// The URL with its password masked.
    name: String,
}

impl StoreSource {
    /// Checks the URL (no connection yet).
    pub fn open(url: &str) -> anyhow::Result<StoreSource> {
        let dsn = strangler_store::Dsn::parse(url).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
        Ok(StoreSource { url: url.to_string(), name: dsn.to_string() })
    }
}

impl Source for StoreSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_noise(&self, query: &Query, _progress: &Progress) -> anyhow::Result<FleetNoise> {
        let mut noise = FleetNoise::default();
        strangler_store::read_noise(&self.url, &query.routes, |route, endpoint, pointer| {
            noise.add(route, endpoint, [pointer]);
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(noise)
    }

    fn read_records(&self, collector: &mut Collector<'_>, _progress: &Progress) -> anyhow::Result<()> {
        let q = collector.query();
        let pushed_down = strangler_store::Query {
            routes: q.routes.clone(),
            instances: q.instances.clone(),
            since_ms: q.since_ms,
            until_ms: q.until_ms,
        };
        let stats =
            strangler_store::read(&self.url, &pushed_down, |r| collector.add(r)).map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..stats.corrupt {
            collector.corrupt();
        }
        Ok(())
    }
}
