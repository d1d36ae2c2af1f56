//! The PostgreSQL sink: one table per rule, one transaction per batch.
//!
//! # The table
//! Created on first connect when missing (in the connection's current schema, usually
//! `public`); when it exists, its columns are checked and a table that does not fit is refused
//! with [`SinkError::Rejected`] naming the column and the fix.
//!
//! | column | type | holds |
//! |---|---|---|
//! | `msg_key` | `bigint PRIMARY KEY` | [`Record::key`] (bit pattern as signed: keys of 2^63 and more read negative); the de-duplication key |
//! | `topic` | `text NOT NULL` | the MQTT topic |
//! | `payload` | `bytea NOT NULL` | the payload, always, byte for byte |
//! | `payload_json` | `jsonb` | only with `payload = "jsonb"`: the payload when it is JSON (UTF-8, and no `\u0000`, which jsonb cannot hold), else NULL |
//! | `qos` | `smallint NOT NULL` | 0, 1 or 2 |
//! | `retain` | `boolean NOT NULL` | the RETAIN flag |
//! | `client_id` | `text NOT NULL` | the publisher's client id |
//! | `username` | `text` | its user name, or NULL |
//! | `cert_identity` | `text` | its certificate identity, or NULL |
//! | `received_at` | `timestamptz NOT NULL` | when the broker accepted it (ms precision; clamped to year 9999) |
//! | `content_type` | `text` | MQTT 5 content type, or NULL |
//! | `user_properties` | `jsonb NOT NULL` | MQTT 5 user properties as an array of `[name, value]` pairs, in order (`[]` when none) |
//! | one per `columns` entry | `jsonb` | the JSON value at that dotted path of the payload (numbers stay numbers: `(temp)::numeric`), or NULL when the payload is not JSON or has no such field |
//!
//! Text cannot hold U+0000 in PostgreSQL: in text columns and user properties it is stored as
//! U+FFFD. A dotted path walks objects by key and arrays by index (`readings.0.value`).
//!
//! An existing table may have more columns, as long as they are nullable or have a default,
//! and `msg_key` must carry a primary key or a unique index of its own.
//!
//! # Writes
//! One transaction per batch: multi-row `INSERT ... ON CONFLICT (msg_key) DO NOTHING`, split so
//! that no statement has more than 65535 parameters, with a prepared statement cached per row
//! count. `Ok` means committed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use crate::config::{
    err as config_err, is_identifier, ForwardConfigError, PayloadMode, PostgresConn, RuleFile,
};
use crate::tls::RustlsConnect;
use crate::{without_nul, BoxError, Record, Sink, SinkError};

/// PostgreSQL's limit on the parameters of one statement.
const MAX_PARAMS: usize = 65_535;
/// 9999-12-31T23:59:59.999Z: later timestamps are clamped to it.
const MAX_RECEIVED_AT_MS: u64 = 253_402_300_799_999;

/// The fixed columns and their `information_schema.columns.data_type`, in insert order
/// (`payload_json` goes after `payload` when asked for).
const FIXED: &[(&str, &str, &str)] = &[
    ("msg_key", "bigint", "bigint PRIMARY KEY"),
    ("topic", "text", "text NOT NULL"),
    ("payload", "bytea", "bytea NOT NULL"),
    ("qos", "smallint", "smallint NOT NULL"),
    ("retain", "boolean", "boolean NOT NULL"),
    ("client_id", "text", "text NOT NULL"),
    ("username", "text", "text"),
    ("cert_identity", "text", "text"),
    (
        "received_at",
        "timestamp with time zone",
        "timestamptz NOT NULL",
    ),
    ("content_type", "text", "text"),
    ("user_properties", "jsonb", "jsonb NOT NULL"),
];

/// A rule's table: its name, how it keeps payloads and which JSON fields it extracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table name (a simple identifier; quoted in SQL).
    pub name: String,
    /// Whether `payload_json` is kept.
    pub payload: PayloadMode,
    /// Extraction columns: name and the path (segments of the dotted path).
    pub columns: Vec<(String, Vec<String>)>,
}

impl TableSpec {
    pub(crate) fn from_rule(r: &RuleFile, key: &str) -> Result<Self, ForwardConfigError> {
        let name = r.table.clone().unwrap_or_else(|| r.name.clone());
        if !is_identifier(&name) {
            return Err(config_err(
                if r.table.is_some() {
                    format!("{key}.table")
                } else {
                    format!("{key}.name")
                },
                format!("{name:?} is not a simple table name"),
                if r.table.is_some() {
                    "use 1 to 63 letters, digits or '_', starting with a letter or '_'"
                } else {
                    "set table = \"...\" (1 to 63 letters, digits or '_'), or rename the rule"
                },
            ));
        }
        let payload = r.payload.unwrap_or_default();
        let mut columns = Vec::new();
        for (col, path) in r.columns.iter().flatten() {
            let ckey = format!("{key}.columns.{col}");
            if !is_identifier(col) {
                return Err(config_err(
                    ckey,
                    format!("{col:?} is not a simple column name"),
                    "use 1 to 63 letters, digits or '_', starting with a letter or '_'",
                ));
            }
            if FIXED.iter().any(|(c, ..)| c.eq_ignore_ascii_case(col))
                || col.eq_ignore_ascii_case("payload_json")
            {
                return Err(config_err(
                    ckey,
                    format!("{col:?} is one of the table's own columns"),
                    "choose another column name",
                ));
            }
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(String::is_empty) {
                return Err(config_err(
                    ckey,
                    format!("{path:?} is not a JSON path"),
                    "write field names separated by '.', like \"meta.site\"",
                ));
            }
            columns.push((col.clone(), segments));
        }
        // Column names are compared the way PostgreSQL folds unquoted names.
        let mut lower: Vec<String> = columns
            .iter()
            .map(|(c, _)| c.to_ascii_lowercase())
            .collect();
        lower.sort_unstable();
        if let Some(w) = lower.windows(2).find(|w| w[0] == w[1]) {
            return Err(config_err(
                format!("{key}.columns"),
                format!("two columns are named {:?} apart from case", w[0]),
                "give each extracted column its own name",
            ));
        }
        Ok(Self {
            name,
            payload,
            columns,
        })
    }

    /// Every column with its expected `data_type` and its DDL type, in insert order.
    fn all_columns(&self) -> Vec<(String, &'static str, &'static str)> {
        let mut cols: Vec<(String, &'static str, &'static str)> = Vec::new();
        for &(c, t, ddl) in FIXED {
            cols.push((c.to_owned(), t, ddl));
            if c == "payload" && self.payload == PayloadMode::Jsonb {
                cols.push(("payload_json".to_owned(), "jsonb", "jsonb"));
            }
        }
        for (c, _) in &self.columns {
            cols.push((c.clone(), "jsonb", "jsonb"));
        }
        cols
    }

    fn create_sql(&self) -> String {
        let cols: Vec<String> = self
            .all_columns()
            .iter()
            .map(|(c, _, ddl)| format!("{} {ddl}", quote(c)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            quote(&self.name),
            cols.join(", ")
        )
    }

    fn insert_sql(&self, rows: usize) -> String {
        let cols = self.all_columns();
        let names: Vec<String> = cols.iter().map(|(c, ..)| quote(c)).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            quote(&self.name),
            names.join(", ")
        );
        let mut n = 0;
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..cols.len() {
                if c > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                sql.push('$');
                sql.push_str(&n.to_string());
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (msg_key) DO NOTHING");
        sql
    }
}

/// A double-quoted SQL identifier (names are checked as simple identifiers at config time;
/// quoting anyway keeps case and keywords safe).
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The sink of one PostgreSQL rule. Connects on the first write, again after any failure.
pub struct PostgresSink {
    conn: Arc<PostgresConn>,
    table: TableSpec,
    state: Option<Connected>,
}

struct Connected {
    client: Client,
    /// Prepared inserts by row count.
    inserts: HashMap<usize, Statement>,
}

impl PostgresSink {
    /// A sink for `table` over `conn`; connects on the first write.
    pub fn new(conn: Arc<PostgresConn>, table: TableSpec) -> Self {
        Self {
            conn,
            table,
            state: None,
        }
    }

    fn unavailable(&self, source: impl Into<BoxError>) -> SinkError {
        SinkError::Unavailable {
            target: self.describe(),
            source: source.into(),
        }
    }

    fn rejected(&self, problem: impl Into<String>, source: Option<BoxError>) -> SinkError {
        SinkError::Rejected {
            target: self.describe(),
            problem: problem.into(),
            source,
        }
    }

    /// Sorts a client error: lost connections and transient server states are
    /// [`SinkError::Unavailable`], anything else the server said is [`SinkError::Rejected`].
    fn classify(&self, e: tokio_postgres::Error, doing: &str) -> SinkError {
        let Some(db) = e.as_db_error() else {
            return self.unavailable(e);
        };
        // 08 connection exception, 40 transaction rollback (serialization, deadlock),
        // 53 insufficient resources, 57 operator intervention (shutdown), 58 system error.
        let code = db.code().code();
        if ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            return self.unavailable(e);
        }
        let problem = format!("{doing}: {} (SQLSTATE {code})", db.message());
        self.rejected(problem, Some(Box::new(e)))
    }

    async fn connect(&self) -> Result<Connected, SinkError> {
        let mut config = self.conn.config.clone();
        if let Some(pw) = &self.conn.password {
            config.password(pw.as_bytes());
        }
        let target = self.describe();
        let client = if let Some(tls) = &self.conn.tls {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = config
                .connect(RustlsConnect(Arc::clone(tls)))
                .await
                .map_err(|e| self.classify(e, "connecting"))?;
            tokio::spawn(drive(connection, target));
            client
        } else {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| self.classify(e, "connecting"))?;
            tokio::spawn(drive(connection, target));
            client
        };
        self.ensure_table(&client).await?;
        tracing::info!(sink = %self.describe(), table = %self.table.name, "connected");
        Ok(Connected {
            client,
            inserts: HashMap::new(),
        })
    }

    /// Creates the table when missing, or checks that the existing one fits.
    async fn ensure_table(&self, client: &Client) -> Result<(), SinkError> {
        let table = &self.table.name;
        let rows = client
            .query(
                "SELECT column_name::text, data_type::text, is_nullable::text = 'YES', column_default IS NOT NULL \
                 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                &[table],
            )
            .await
            .map_err(|e| self.classify(e, "reading the table's columns"))?;
        if rows.is_empty() {
            client
                .batch_execute(&self.table.create_sql())
                .await
                .map_err(|e| {
                    // Another rule's sink created it at the same moment (duplicate type or
                    // table): the next write finds it and checks it.
                    let raced = e.code().is_some_and(|c| {
                        *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE
                    });
                    if raced {
                        self.unavailable(e)
                    } else {
                        self.classify(e, &format!("creating table {table}"))
                    }
                })?;
            tracing::info!(sink = %self.describe(), %table, "created table");
            return Ok(());
        }
        let mut existing: HashMap<String, (String, bool)> = HashMap::new();
        for row in &rows {
            let get = |i| -> Result<String, SinkError> {
                row.try_get::<_, String>(i).map_err(|e| {
                    self.rejected(
                        "unexpected answer from information_schema",
                        Some(Box::new(e)),
                    )
                })
            };
            let nullable: bool = row.try_get(2).unwrap_or(true);
            let has_default: bool = row.try_get(3).unwrap_or(true);
            existing.insert(get(0)?, (get(1)?, nullable || has_default));
        }
        let expected = self.table.all_columns();
        for (col, data_type, ddl) in &expected {
            match existing.get(col) {
                None => {
                    return Err(self.rejected(
                        format!(
                            "table {table} exists but has no column {col}; fix: ALTER TABLE {} ADD COLUMN {} {}, or point the rule at another table",
                            quote(table),
                            quote(col),
                            ddl.replace(" NOT NULL", "").replace(" PRIMARY KEY", " UNIQUE"),
                        ),
                        None,
                    ))
                }
                Some((found, _)) if found != data_type => {
                    return Err(self.rejected(
                        format!(
                            "column {col} of table {table} is {found}, not {data_type}; fix: change its type (ALTER TABLE {} ALTER COLUMN {} TYPE {data_type}), or point the rule at another table",
                            quote(table),
                            quote(col)
                        ),
                        None,
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((col, _)) = existing
            .iter()
            .find(|(c, (_, optional))| !optional && !expected.iter().any(|(e, ..)| e == *c))
        {
            return Err(self.rejected(
                format!(
                    "table {table} has a column {col} that is NOT NULL without a default, which Moat cannot fill; fix: give it a default or drop NOT NULL"
                ),
                None,
            ));
        }
        let unique = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1)) \
                 AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = 'msg_key')",
                &[table],
            )
            .await
            .map_err(|e| self.classify(e, "reading the table's indexes"))?;
        if !unique.try_get::<_, bool>(0).unwrap_or(false) {
            return Err(self.rejected(
                format!(
                    "column msg_key of table {table} is not unique, so repeated deliveries would add rows; fix: ALTER TABLE {} ADD PRIMARY KEY (msg_key)",
                    quote(table)
                ),
                None,
            ));
        }
        Ok(())
    }

    async fn write_batch(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        if self.state.is_none() {
            self.state = Some(self.connect().await?);
        }
        let rows: Vec<RowValues<'_>> = batch
            .iter()
            .map(|r| RowValues::new(r, &self.table))
            .collect();
        let per_row = self.table.all_columns().len();
        let chunk = (MAX_PARAMS / per_row).max(1);
        // Prepare outside the transaction borrow; the cache keeps them for later batches.
        let mut sizes: Vec<usize> = rows.chunks(chunk).map(<[_]>::len).collect();
        sizes.dedup();
        for n in sizes {
            let prepared = match &self.state {
                Some(s) => s.inserts.contains_key(&n),
                None => false,
            };
            if !prepared {
                let sql = self.table.insert_sql(n);
                let stmt = {
                    let Some(state) = &self.state else {
                        return Err(self.unavailable("not connected"));
                    };
                    state.client.prepare(&sql).await
                };
                let stmt = stmt.map_err(|e| self.classify(e, "preparing the insert"))?;
                if let Some(state) = &mut self.state {
                    state.inserts.insert(n, stmt);
                }
            }
        }
        let Some(state) = &mut self.state else {
            return Err(self.unavailable("not connected"));
        };
        let result: Result<(), tokio_postgres::Error> = async {
            let tx = state.client.transaction().await?;
            for part in rows.chunks(chunk) {
                let Some(stmt) = state.inserts.get(&part.len()) else {
                    unreachable!("every chunk size was prepared above");
                };
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(part.len() * per_row);
                for row in part {
                    row.push_params(&mut params);
                }
                tx.execute(stmt, &params).await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|e| self.classify(e, "inserting"))
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, target: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(sink = %target, error = %e, "connection ended");
    }
}

impl Sink for PostgresSink {
    fn describe(&self) -> String {
        format!("{} table {}", self.conn.describe(), self.table.name)
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a [Record],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let limit = self.conn.write_timeout;
            let result = match tokio::time::timeout(limit, self.write_batch(batch)).await {
                Ok(r) => r,
                Err(_) => Err(self.unavailable(format!("no answer within {limit:?}"))),
            };
            if result.is_err() {
                // Reconnect (and check the table again) on the next write.
                self.state = None;
            }
            result
        })
    }
}

/// One record as parameters.
struct RowValues<'a> {
    key: i64,
    topic: std::borrow::Cow<'a, str>,
    payload: &'a [u8],
    payload_json: Option<Option<Value>>,
    qos: i16,
    retain: bool,
    client_id: std::borrow::Cow<'a, str>,
    username: Option<std::borrow::Cow<'a, str>>,
    cert_identity: Option<std::borrow::Cow<'a, str>>,
    received_at: SystemTime,
    content_type: Option<std::borrow::Cow<'a, str>>,
    user_properties: Value,
    extracted: Vec<Option<Value>>,
}

impl<'a> RowValues<'a> {
    fn new(r: &'a Record, table: &TableSpec) -> Self {
        let wants_json = table.payload == PayloadMode::Jsonb || !table.columns.is_empty();
        let json = if wants_json {
            payload_json(&r.payload)
        } else {
            None
        };
        let extracted = table
            .columns
            .iter()
            .map(|(_, path)| json.as_ref().and_then(|j| lookup(j, path)).cloned())
            .collect();
        let user_properties = Value::Array(
            r.user_properties
                .iter()
                .map(|(n, v)| {
                    Value::Array(vec![
                        without_nul(n).into_owned().into(),
                        without_nul(v).into_owned().into(),
                    ])
                })
                .collect(),
        );
        Self {
            // The bit pattern, as documented: u64 keys map one to one onto bigint.
            key: r.key as i64,
            topic: without_nul(&r.topic),
            payload: &r.payload,
            payload_json: (table.payload == PayloadMode::Jsonb).then_some(json),
            qos: i16::from(r.qos),
            retain: r.retain,
            client_id: without_nul(&r.client_id),
            username: r.username.as_deref().map(without_nul),
            cert_identity: r.cert_identity.as_deref().map(without_nul),
            received_at: UNIX_EPOCH
                + Duration::from_millis(r.received_at_ms.min(MAX_RECEIVED_AT_MS)),
            content_type: r.content_type.as_deref().map(without_nul),
            user_properties,
            extracted,
        }
    }

    fn push_params<'p>(&'p self, params: &mut Vec<&'p (dyn ToSql + Sync)>) {
        params.push(&self.key);
        params.push(&self.topic);
        params.push(&self.payload);
        if let Some(j) = &self.payload_json {
            params.push(j);
        }
        params.push(&self.qos);
        params.push(&self.retain);
        params.push(&self.client_id);
        params.push(&self.username);
        params.push(&self.cert_identity);
        params.push(&self.received_at);
        params.push(&self.content_type);
        params.push(&self.user_properties);
        for e in &self.extracted {
            params.push(e);
        }
    }
}

/// The payload as JSON, when it is JSON that jsonb can hold (no U+0000 anywhere).
fn payload_json(payload: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    (!has_nul(&v)).then_some(v)
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn lookup<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for seg in path {
        v = match v {
            Value::Object(o) => o.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "t".into(),
            payload: PayloadMode::Jsonb,
            columns: vec![("temp".into(), vec!["temp".into()])],
        }
    }

    #[test]
    fn insert_sql_numbers_every_parameter() {
        let sql = spec().insert_sql(2);
        assert!(
            sql.starts_with(
                "INSERT INTO \"t\" (\"msg_key\", \"topic\", \"payload\", \"payload_json\", \"qos\""
            ),
            "{sql}"
        );
        assert!(sql.contains("$13), ($14,"), "{sql}");
        assert!(
            sql.ends_with("$26) ON CONFLICT (msg_key) DO NOTHING"),
            "{sql}"
        );
    }

    #[test]
    fn json_paths_and_nul() {
        let v: Value = serde_json::from_str(r#"{"a":{"b":[1,{"c":"x"}]}}"#).expect("json");
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(lookup(&v, &path("a.b.1.c")), Some(&Value::from("x")));
        assert_eq!(lookup(&v, &path("a.b.2")), None);
        assert_eq!(lookup(&v, &path("a.x")), None);
        assert!(payload_json(br#"{"a":"\u0000"}"#).is_none());
        assert!(payload_json(b"not json").is_none());
        assert!(payload_json(b"12.5").is_some());
    }
}
