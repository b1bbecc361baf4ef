//! Records back out of the store for `strangler report --from postgres://…`:
//! the filters go into the SQL (the `(route, ts)` index serves them), and the
//! rows stream with `COPY (SELECT record …) TO STDOUT (FORMAT binary)`, each
//! parsed into a [`DiffRecord`] as it arrives, in constant memory.

use std::pin::pin;

use futures_util::StreamExt;
use strangler_evidence::record::DiffRecord;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;

use crate::{describe, Dsn};

/// Which records to read; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only these routes (any of them).
    pub routes: Vec<String>,
    /// Only records written by these replicas.
    pub instances: Vec<String>,
    /// Only records at or after this time (epoch milliseconds).
    pub since_ms: Option<i64>,
    /// Only records before this time (epoch milliseconds).
    pub until_ms: Option<i64>,
}

/// What a read went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Rows the query returned.
    pub rows: u64,
    /// Rows whose JSON is not a diff record (reported, skipped).
    pub corrupt: u64,
}

/// Reads the records `query` selects from the store at `dsn` (password from
/// the DSN or `PGPASSWORD`), calling `each` with every one. Blocking: it
/// runs a small runtime of its own, for the report's synchronous code.
pub fn read(dsn: &str, query: &Query, each: impl FnMut(DiffRecord)) -> Result<ReadStats, String> {
    let dsn = Dsn::parse(dsn)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let config = dsn.connect_config(None)?;
        let tls = crate::tls::connector(&dsn)?;
        let (client, connection) =
            config.connect(tls).await.map_err(|e| format!("cannot read the store {dsn}: {}", describe(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        read_from(&client, query, each).await.map_err(|e| format!("reading the store {dsn}: {e}"))
    })
}

/// [`read`] on a connection already open.
pub async fn read_from(client: &Client, query: &Query, mut each: impl FnMut(DiffRecord)) -> Result<ReadStats, String> {
    // Literals below are written for standard-conforming strings.
    client.batch_execute("SET standard_conforming_strings = on").await.map_err(|e| describe(&e))?;
    let sql = format!("COPY (SELECT record FROM shadow_records{}) TO STDOUT (FORMAT binary)", where_clause(query)?);
    let stream = client.copy_out(sql.as_str()).await.map_err(|e| describe(&e))?;
    let mut rows = pin!(BinaryCopyOutStream::new(stream, &[Type::JSONB]));
    let mut stats = ReadStats::default();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| describe(&e))?;
        stats.rows += 1;
        let text: JsonText<'_> = row.try_get(0).map_err(|e| describe(&e))?;
        match serde_json::from_slice::<DiffRecord>(text.0) {
            Ok(record) => each(record),
            Err(e) => {
                stats.corrupt += 1;
                if stats.corrupt <= 10 {
                    eprintln!("store: a row that is not a diff record: {e}");
                }
            }
        }
    }
    Ok(stats)
}

/// The noise evidence of the fleet for `routes` (all routes when empty):
/// every `(route, endpoint, pointer)` any replica saw differ between two
/// answers of the primary, from the store's noise table. Every pointer a
/// record lists as noise was learned, and so written there, by the replica
/// that wrote the record; reading the table instead of every record's
/// `noise` keeps a report's first pass instant.
pub fn read_noise(dsn: &str, routes: &[String], mut each: impl FnMut(&str, &str, &str)) -> Result<u64, String> {
    let dsn = Dsn::parse(dsn)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let config = dsn.connect_config(None)?;
        let tls = crate::tls::connector(&dsn)?;
        let (client, connection) =
            config.connect(tls).await.map_err(|e| format!("cannot read the store {dsn}: {}", describe(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let rows = client
            .query(
                "SELECT DISTINCT route, endpoint, pointer FROM shadow_noise WHERE cardinality($1::text[]) = 0 OR route = ANY($1)",
                &[&routes],
            )
            .await
            .map_err(|e| format!("reading the store {dsn}: {}", describe(&e)))?;
        for row in &rows {
            each(row.get(0), row.get(1), row.get(2));
        }
        Ok(rows.len() as u64)
    })
}

/// The `WHERE` clause for `query` (COPY takes no bind parameters, so values
/// are written as quoted literals).
fn where_clause(query: &Query) -> Result<String, String> {
    let mut conditions = Vec::new();
    let any = |column: &str, values: &[String]| -> Result<String, String> {
        let list = values.iter().map(|v| literal(v)).collect::<Result<Vec<_>, _>>()?;
        Ok(format!("{column} = ANY(ARRAY[{}]::text[])", list.join(", ")))
    };
    if !query.routes.is_empty() {
        conditions.push(any("route", &query.routes)?);
    }
    if !query.instances.is_empty() {
        conditions.push(any("instance", &query.instances)?);
    }
    if let Some(ms) = query.since_ms {
        conditions.push(format!("ts >= to_timestamp({ms}::double precision / 1000)"));
    }
    if let Some(ms) = query.until_ms {
        conditions.push(format!("ts < to_timestamp({ms}::double precision / 1000)"));
    }
    Ok(if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) })
}

/// `text` as an SQL string literal (standard-conforming strings).
fn literal(text: &str) -> Result<String, String> {
    if text.contains('\0') {
        return Err(format!("{text:?} contains a NUL byte"));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// A `jsonb` value's text, borrowed from the row (its version byte dropped).
struct JsonText<'a>(&'a [u8]);

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, text)) => Ok(JsonText(text)),
            _ => Err("unsupported jsonb version".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_sql_with_quoted_literals() {
        let query = Query {
            routes: vec!["users".into(), "it's".into()],
            instances: vec!["pod-a".into()],
            since_ms: Some(1_000),
            until_ms: Some(2_500),
        };
        assert_eq!(
            where_clause(&query).unwrap(),
            " WHERE route = ANY(ARRAY['users', 'it''s']::text[]) AND instance = ANY(ARRAY['pod-a']::text[]) \
             AND ts >= to_timestamp(1000::double precision / 1000) AND ts < to_timestamp(2500::double precision / 1000)"
        );
        assert_eq!(where_clause(&Query::default()).unwrap(), "");
        assert!(where_clause(&Query { routes: vec!["a\0b".into()], ..Query::default() }).is_err());
    }
}
