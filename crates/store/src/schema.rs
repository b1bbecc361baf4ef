//! The store's tables, created and changed by numbered migrations recorded
//! in `schema_migrations`. Every replica runs [`migrate`] when it connects;
//! a transaction-scoped advisory lock makes N replicas starting at once
//! apply each migration exactly once (the others wait, then find it done).

use tokio_postgres::Client;

/// Advisory lock key under which migrations run ("strangler" in ASCII, cut to 63 bits).
pub const MIGRATION_LOCK: i64 = 0x7374_7261_6e67_6c65;
/// Advisory lock key that the replica enforcing retention holds.
pub const RETENTION_LOCK: i64 = 0x7374_7261_6e67_6c66;

/// The migrations, in order: `(version, name, SQL)`. Never edit one that
/// has shipped; add the next.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "shadow records and learned noise",
    "CREATE TABLE shadow_records (
        id uuid PRIMARY KEY,
        ts timestamptz NOT NULL,
        route text NOT NULL,
        endpoint text NOT NULL,
        instance text NOT NULL,
        config_hash text NOT NULL,
        result text NOT NULL,
        record jsonb NOT NULL
    );
    -- What the report filters on: a route over a time span.
    CREATE INDEX shadow_records_route_ts ON shadow_records (route, ts);
    -- Retention deletes by age; rows arrive in time order, so a BRIN index is tiny.
    CREATE INDEX shadow_records_ts ON shadow_records USING brin (ts);
    CREATE TABLE shadow_noise (
        route text NOT NULL,
        endpoint text NOT NULL,
        pointer text NOT NULL,
        instance text NOT NULL,
        first_seen timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (route, endpoint, pointer, instance)
    );",
)];

/// Applies the migrations this database lacks; returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let done: Vec<i32> =
        tx.query("SELECT version FROM schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| !done.contains(v)) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        applied.push(*version);
    }
    tx.commit().await?;
    for version in &applied {
        tracing::info!(version, "store schema migration applied");
    }
    Ok(applied)
}
