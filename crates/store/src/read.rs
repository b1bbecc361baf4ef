//! Records back out of the store for `strangler report --from postgres://…`:
//! the filters go into the SQL (the `(route, ts)` index serves them), and the
//! rows stream with `COPY (SELECT record …) TO STDOUT (FORMAT binary)`, each
//! parsed into a [`DiffRecord`] as it arrives, in constant memory.

use std::pin::pin;
use std::sync::mpsc::SyncSender;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use strangler_evidence::record::DiffRecord;
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
/// the DSN or `PGPASSWORD`), calling `each` with every one. Blocking, for the
/// report's synchronous code: a thread of its own streams the rows off the
/// connection while this one parses them and calls `each`, so that reading
/// and parsing overlap.
pub fn read(dsn: &str, query: &Query, mut each: impl FnMut(DiffRecord)) -> Result<ReadStats, String> {
    let dsn = Dsn::parse(dsn)?;
    let sql = copy_sql(query)?;
    let name = dsn.to_string();
    let (rows, batches) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(64);
    let fetcher = std::thread::Builder::new()
        .name("strangler-store-read".into())
        .spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = connect_to_read(&dsn).await?;
                stream_rows(&client, &sql, rows).await.map_err(|e| format!("reading the store {dsn}: {e}"))
            })
        })
        .map_err(|e| e.to_string())?;
    let mut stats = ReadStats::default();
    for batch in batches {
        for json in batch {
            stats.rows += 1;
            match serde_json::from_slice::<DiffRecord>(&json) {
                Ok(record) => each(record),
                Err(e) => {
                    stats.corrupt += 1;
                    if stats.corrupt <= 10 {
                        eprintln!("{name}: a row that is not a diff record: {e}");
                    }
                }
            }
        }
    }
    fetcher.join().map_err(|_| format!("reading the store {name}: the reader thread failed"))??;
    Ok(stats)
}

async fn connect_to_read(dsn: &Dsn) -> Result<Client, String> {
    let config = dsn.connect_config(None)?;
    let tls = crate::tls::connector(dsn)?;
    let (client, connection) =
        config.connect(tls).await.map_err(|e| format!("cannot read the store {dsn}: {}", describe(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The `COPY` that streams `query`'s records, as `jsonb` in binary form.
fn copy_sql(query: &Query) -> Result<String, String> {
    Ok(format!("COPY (SELECT record FROM shadow_records{}) TO STDOUT (FORMAT binary)", where_clause(query)?))
}

/// Rows per batch handed from the streaming thread to the parser.
const BATCH_ROWS: usize = 512;

/// Runs `sql` (a binary `COPY … TO STDOUT` of one `jsonb` column) and sends
/// each row's JSON text, in batches, until the rows end or `rows` closes.
async fn stream_rows(client: &Client, sql: &str, rows: SyncSender<Vec<Bytes>>) -> Result<(), String> {
    // The filters are written as literals for standard-conforming strings.
    client.batch_execute("SET standard_conforming_strings = on").await.map_err(|e| describe(&e))?;
    let mut stream = pin!(client.copy_out(sql).await.map_err(|e| describe(&e))?);
    let mut frames = CopyFrames::default();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while let Some(data) = stream.next().await {
        frames.push(&data.map_err(|e| describe(&e))?);
        while let Some(json) = frames.next_row()? {
            batch.push(json);
            if batch.len() == BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if rows.send(full).is_err() {
                    return Ok(());
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = rows.send(batch);
    }
    Ok(())
}

/// PostgreSQL's binary COPY format for one `jsonb` column, cut into rows as
/// the data arrives: a header, then per row a field count (`-1` ends it), the
/// field's length and its bytes (`jsonb`: a version byte, then the text).
#[derive(Default)]
struct CopyFrames {
    buf: BytesMut,
    header_done: bool,
}

impl CopyFrames {
    const SIGNATURE: &'static [u8] = b"PGCOPY\n\xff\r\n\0";

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete row's JSON text, if one has arrived.
    fn next_row(&mut self) -> Result<Option<Bytes>, String> {
        if !self.header_done {
            // The signature, 4 bytes of flags, the header extension's length, the extension.
            let at = Self::SIGNATURE.len() + 4;
            if self.buf.len() < at + 4 {
                return Ok(None);
            }
            if !self.buf.starts_with(Self::SIGNATURE) {
                return Err("not a binary COPY stream".into());
            }
            let extension = u32::from_be_bytes([self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]]);
            let end = at + 4 + extension as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            self.buf.advance(end);
            self.header_done = true;
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        match i16::from_be_bytes([self.buf[0], self.buf[1]]) {
            -1 => {
                self.buf.clear();
                return Ok(None);
            }
            1 => {}
            n => return Err(format!("a row with {n} fields (expected 1)")),
        }
        if self.buf.len() < 6 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]);
        let len = usize::try_from(len).map_err(|_| "a row whose record is NULL".to_string())?;
        if self.buf.len() < 6 + len {
            return Ok(None);
        }
        let mut row = self.buf.split_to(6 + len).freeze();
        row.advance(6);
        match row.first() {
            Some(1) => {
                row.advance(1);
                Ok(Some(row))
            }
            _ => Err("unsupported jsonb version".into()),
        }
    }
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
        let client = connect_to_read(&dsn).await?;
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

    #[test]
    fn binary_copy_rows_are_cut_out_however_the_data_is_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(CopyFrames::SIGNATURE);
        stream.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for json in [&b"{\"a\":1}"[..], b"[]"] {
            stream.extend_from_slice(&1i16.to_be_bytes());
            stream.extend_from_slice(&(json.len() as i32 + 1).to_be_bytes());
            stream.push(1);
            stream.extend_from_slice(json);
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        for piece in [1, 3, 7, stream.len()] {
            let mut frames = CopyFrames::default();
            let mut rows = Vec::new();
            for chunk in stream.chunks(piece) {
                frames.push(chunk);
                while let Some(row) = frames.next_row().unwrap() {
                    rows.push(row);
                }
            }
            assert_eq!(rows, [&b"{\"a\":1}"[..], &b"[]"[..]], "in pieces of {piece}");
        }
    }
}
