//! Call detail records (CDRs) in SQLite (the default, in the state
//! directory) or PostgreSQL (`[store] url`), one schema for both.
//!
//! A row is written when a call arrives (or is placed), its answer time when
//! it is answered, and the rest when it ends; so a call cut by `kill -9` or a
//! power loss is still found after the restart, closed as `lost` at its
//! node's last heartbeat. Writes never block a call: they go through a
//! bounded queue to one writer task, in order; a full queue drops the write
//! and counts it. Reads (the API, `agentline cdrs`) go to the pool directly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::config::{redact_url, StoreConfig};

/// Embedded migrations (`migrations/*.sql`), portable SQL.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Writes waiting for the writer task; beyond this they are dropped (and
/// counted) rather than slowing calls down.
const QUEUE: usize = 10_000;
/// How often a node records that it is alive: a crash's lost calls end at
/// most this long before it.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often old records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// The most rows one `GET /cdrs` page returns.
pub const MAX_PAGE: u32 = 1000;
/// Rows per page when the request does not say.
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the call store {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("call store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("call store query: {0}")]
    Query(#[from] sqlx::Error),
    #[error("bad cursor `{0}`")]
    BadCursor(String),
    #[error("the call store's writer has stopped")]
    WriterGone,
}

/// Inbound (a phone or trunk called us) or outbound (we placed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What is known when a call arrives.
#[derive(Debug, Clone)]
pub struct CdrStart {
    pub id: String,
    pub call_id: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub caller_id: Option<String>,
    pub trunk: Option<String>,
    pub route: String,
    pub agent: Option<String>,
    pub invite_at_ms: i64,
}

/// What is known when it ends.
#[derive(Debug, Clone)]
pub struct CdrEnd {
    pub id: String,
    pub uuid: Option<String>,
    pub agent: Option<String>,
    pub answer_at_ms: Option<i64>,
    pub end_at_ms: i64,
    pub end_reason: String,
    /// caller / agent / api / timeout / error / callee / lost.
    pub hung_up_by: String,
    pub sip_code: Option<u16>,
    pub codec: Option<String>,
    pub srtp: Option<String>,
    pub recording: Option<String>,
    /// Answering-machine detection's result (human / machine / notsure).
    pub amd: Option<String>,
    /// Everything else (quality, turns, transcript, DTMF, transfer,
    /// webhooks, fallbacks): a JSON object.
    pub detail: serde_json::Value,
}

/// One call's record as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Cdr {
    pub id: String,
    pub node: String,
    pub uuid: Option<String>,
    pub call_id: String,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub caller_id: Option<String>,
    pub trunk: Option<String>,
    pub route: String,
    pub agent: Option<String>,
    pub invite_at_unix_ms: i64,
    pub answer_at_unix_ms: Option<i64>,
    pub end_at_unix_ms: Option<i64>,
    /// Answer to end (0 when never answered); `None` while in progress.
    pub duration_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub hung_up_by: Option<String>,
    pub sip_code: Option<i64>,
    pub codec: Option<String>,
    pub srtp: Option<String>,
    pub recording: Option<String>,
    pub amd: Option<String>,
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// Which records a listing wants; newest first.
#[derive(Debug, Clone, Default)]
pub struct CdrFilter {
    /// Calls that arrived at or after this (Unix ms).
    pub from_ms: Option<i64>,
    /// Calls that arrived before this (Unix ms).
    pub to_ms: Option<i64>,
    pub route: Option<String>,
    pub limit: Option<u32>,
    /// Where the previous page stopped (its `next_cursor`).
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct CdrPage {
    pub cdrs: Vec<Cdr>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A call the previous run of this node left open (a crash): now closed
/// as `lost`.
#[derive(Debug, Clone)]
pub struct LostCall {
    pub id: String,
    pub recording: Option<String>,
}

/// What opening the store found and did.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub lost: Vec<LostCall>,
    /// Records deleted by retention, and the recordings they named.
    pub purged: u64,
    pub purged_recordings: Vec<String>,
}

enum Write {
    Start(CdrStart),
    Answer {
        id: String,
        at_ms: i64,
    },
    End(Box<CdrEnd>),
    Recording {
        id: String,
        path: String,
    },
    /// Answered when everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

struct Inner {
    pool: AnyPool,
    node: String,
    queue: mpsc::Sender<Write>,
    dropped: AtomicU64,
    writable: AtomicBool,
}

/// The call store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

const COLUMNS: &str = "id, node, uuid, call_id, direction, from_uri, to_uri, caller_id, trunk, \
     route, agent, invite_at, answer_at, end_at, duration_ms, end_reason, hung_up_by, sip_code, \
     codec, srtp, recording, amd, detail";

impl Store {
    /// Opens (creating and migrating) the store, closes the calls this
    /// node's previous run left open as `lost`, applies retention and starts
    /// the writer. `now_ms` is the wall clock at start.
    pub async fn open(
        cfg: &StoreConfig,
        state_dir: &Path,
        now_ms: i64,
    ) -> Result<(Store, Opened), StoreError> {
        sqlx::any::install_default_drivers();
        if cfg.url.is_none() {
            std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        }
        let url = cfg.url_for(state_dir);
        let pool = AnyPoolOptions::new()
            .max_connections(if cfg.is_postgres() { 8 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_url(&url),
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        if !cfg.is_postgres() {
            // Readers (the API, `agentline cdrs`) never block the writer;
            // the setting stays with the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&pool)
                .await?;
        }
        let node = cfg.node.clone();
        let last_seen = last_seen_of(&pool, &node).await?;
        let mut opened = Opened {
            lost: close_lost(&pool, &node, last_seen).await?,
            ..Default::default()
        };
        sqlx::query(
            "INSERT INTO nodes (node, started_at, last_seen) VALUES ($1, $2, $2) \
             ON CONFLICT (node) DO UPDATE SET started_at = $2, last_seen = $2",
        )
        .bind(&node)
        .bind(now_ms)
        .execute(&pool)
        .await?;
        if cfg.keep_days > 0 {
            let (n, files) = purge(&pool, now_ms - i64::from(cfg.keep_days) * 86_400_000).await?;
            opened.purged = n;
            opened.purged_recordings = files;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                node,
                queue: tx,
                dropped: AtomicU64::new(0),
                writable: AtomicBool::new(true),
            }),
        };
        tokio::spawn(writer(store.clone(), rx, cfg.keep_days));
        Ok((store, opened))
    }

    /// The store opened for reading only (`agentline cdrs` beside a
    /// running server): no recovery, no retention, no writer.
    pub async fn reader(cfg: &StoreConfig, state_dir: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = match &cfg.url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=ro",
                state_dir.join("agentline.db").display()
            ),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_url(&url),
                source,
            })?;
        let (queue, _) = mpsc::channel(1);
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                node: cfg.node.clone(),
                queue,
                dropped: AtomicU64::new(0),
                writable: AtomicBool::new(false),
            }),
        })
    }

    /// The name this node writes into its records.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the last write (or heartbeat) succeeded.
    pub fn writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    /// Writes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn enqueue(&self, w: Write) {
        if self.inner.queue.try_send(w).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("agentline_cdr_writes_dropped_total").increment(1);
            tracing::warn!("call store queue full: a record update was dropped");
        }
    }

    pub fn call_started(&self, s: CdrStart) {
        self.enqueue(Write::Start(s));
    }

    pub fn call_answered(&self, id: &str, at_ms: i64) {
        self.enqueue(Write::Answer {
            id: id.to_string(),
            at_ms,
        });
    }

    pub fn call_recording(&self, id: &str, path: &str) {
        self.enqueue(Write::Recording {
            id: id.to_string(),
            path: path.to_string(),
        });
    }

    pub fn call_ended(&self, e: CdrEnd) {
        self.enqueue(Write::End(Box::new(e)));
    }

    /// Waits until everything queued so far is written (shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queue
            .send(Write::Flush(tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }

    /// One record.
    pub async fn get(&self, id: &str) -> Result<Option<Cdr>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM cdrs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(cdr_of).transpose()
    }

    /// A page of records, newest first.
    pub async fn list(&self, f: &CdrFilter) -> Result<CdrPage, StoreError> {
        let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let mut conds: Vec<String> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.from_ms.is_some() {
            conds.push(format!("invite_at >= {}", next()));
        }
        if f.to_ms.is_some() {
            conds.push(format!("invite_at < {}", next()));
        }
        if f.route.is_some() {
            conds.push(format!("route = {}", next()));
        }
        let cursor = f.cursor.as_deref().map(parse_cursor).transpose()?;
        if cursor.is_some() {
            let (a, b, c) = (next(), next(), next());
            conds.push(format!(
                "(invite_at < {a} OR (invite_at = {b} AND id < {c}))"
            ));
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM cdrs {where_} ORDER BY invite_at DESC, id DESC LIMIT {}",
            limit + 1
        );
        let mut q = sqlx::query(&sql);
        if let Some(v) = f.from_ms {
            q = q.bind(v);
        }
        if let Some(v) = f.to_ms {
            q = q.bind(v);
        }
        if let Some(v) = &f.route {
            q = q.bind(v.clone());
        }
        if let Some((at, id)) = cursor {
            q = q.bind(at).bind(at).bind(id);
        }
        let rows = q.fetch_all(&self.inner.pool).await?;
        let mut cdrs = rows.iter().map(cdr_of).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if cdrs.len() > limit as usize {
            cdrs.truncate(limit as usize);
            cdrs.last()
                .map(|c| format!("{}:{}", c.invite_at_unix_ms, c.id))
        } else {
            None
        };
        Ok(CdrPage { cdrs, next_cursor })
    }

    async fn apply(&self, w: &Write) -> Result<(), sqlx::Error> {
        let pool = &self.inner.pool;
        match w {
            Write::Start(s) => {
                sqlx::query(
                    "INSERT INTO cdrs (id, node, call_id, direction, from_uri, to_uri, caller_id, \
                     trunk, route, agent, invite_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&s.id)
                .bind(&self.inner.node)
                .bind(&s.call_id)
                .bind(s.direction.as_str())
                .bind(&s.from)
                .bind(&s.to)
                .bind(s.caller_id.clone())
                .bind(s.trunk.clone())
                .bind(&s.route)
                .bind(s.agent.clone())
                .bind(s.invite_at_ms)
                .execute(pool)
                .await?;
            }
            Write::Answer { id, at_ms } => {
                sqlx::query("UPDATE cdrs SET answer_at = $1 WHERE id = $2")
                    .bind(*at_ms)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Write::End(e) => {
                let duration = e.answer_at_ms.map_or(0, |a| (e.end_at_ms - a).max(0));
                sqlx::query(
                    "UPDATE cdrs SET uuid = $1, agent = COALESCE($2, agent), \
                     answer_at = COALESCE($3, answer_at), end_at = $4, duration_ms = $5, \
                     end_reason = $6, hung_up_by = $7, sip_code = $8, codec = $9, srtp = $10, \
                     recording = $11, detail = $12, amd = $13 WHERE id = $14",
                )
                .bind(e.uuid.clone())
                .bind(e.agent.clone())
                .bind(e.answer_at_ms)
                .bind(e.end_at_ms)
                .bind(duration)
                .bind(&e.end_reason)
                .bind(&e.hung_up_by)
                .bind(e.sip_code.map(i64::from))
                .bind(e.codec.clone())
                .bind(e.srtp.clone())
                .bind(e.recording.clone())
                .bind(e.detail.to_string())
                .bind(e.amd.clone())
                .bind(&e.id)
                .execute(pool)
                .await?;
            }
            Write::Recording { id, path } => {
                sqlx::query("UPDATE cdrs SET recording = $1 WHERE id = $2")
                    .bind(path)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Write::Flush(_) => {}
        }
        Ok(())
    }

    async fn heartbeat(&self, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE nodes SET last_seen = $1 WHERE node = $2")
            .bind(now_ms)
            .bind(&self.inner.node)
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
    }

    fn set_writable(&self, ok: bool, what: &str, e: Option<&sqlx::Error>) {
        let was = self.inner.writable.swap(ok, Ordering::Relaxed);
        match e {
            Some(e) => {
                metrics::counter!("agentline_cdr_write_failures_total").increment(1);
                tracing::warn!(error = %e, what, "call store write failed");
            }
            None if !was => tracing::info!("call store writable again"),
            None => {}
        }
    }
}

/// The one task that writes, in the order the calls asked.
async fn writer(store: Store, mut rx: mpsc::Receiver<Write>, keep_days: u32) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            w = rx.recv() => {
                let Some(w) = w else { break };
                if let Write::Flush(done) = w {
                    let _ = done.send(());
                    continue;
                }
                // One retry: a PostgreSQL fail-over or a busy SQLite file.
                let mut result = store.apply(&w).await;
                if result.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    result = store.apply(&w).await;
                }
                store.set_writable(result.is_ok(), "record", result.as_ref().err());
            }
            _ = beat.tick() => {
                let now = crate::clock::unix_ms() as i64;
                let r = store.heartbeat(now).await;
                store.set_writable(r.is_ok(), "heartbeat", r.as_ref().err());
                if keep_days > 0 && last_purge.elapsed() >= PURGE_EVERY {
                    last_purge = tokio::time::Instant::now();
                    let before = now - i64::from(keep_days) * 86_400_000;
                    match purge(&store.inner.pool, before).await {
                        Ok((n, files)) => {
                            remove_recordings(&files);
                            if n > 0 {
                                tracing::info!(records = n, "old call records deleted");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "call record retention failed"),
                    }
                }
            }
        }
    }
}

/// A page as a text table, one call per line, newest first.
pub fn table(page: &CdrPage) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<23}  {:<8}  {:<16}  {:<14}  {:<12}  {:>8}  {:<4}  {:<8}  REASON / ID",
        "INVITE (UTC)", "DIR", "FROM", "ROUTE", "AGENT", "SECONDS", "SIP", "BY"
    );
    for c in &page.cdrs {
        let from = c.caller_id.clone().unwrap_or_else(|| c.from.clone());
        let secs = c
            .duration_ms
            .map_or("-".to_string(), |d| format!("{:.1}", d as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{:<23}  {:<8}  {:<16}  {:<14}  {:<12}  {:>8}  {:<4}  {:<8}  {} / {}",
            crate::clock::rfc3339_ms(c.invite_at_unix_ms),
            c.direction,
            clip(&from, 16),
            clip(&c.route, 14),
            clip(c.agent.as_deref().unwrap_or("-"), 12),
            secs,
            c.sip_code.map_or("-".to_string(), |s| s.to_string()),
            c.hung_up_by.as_deref().unwrap_or("(up)"),
            c.end_reason.as_deref().unwrap_or("in progress"),
            c.id
        );
    }
    match &page.next_cursor {
        Some(cur) => {
            let _ = write!(out, "(more: --cursor '{cur}')");
        }
        None => {
            let _ = write!(out, "({} calls)", page.cdrs.len());
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

/// Deletes the recordings of purged records (missing files are fine).
pub fn remove_recordings(files: &[String]) {
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %f, error = %e, "cannot delete an old recording"),
        }
    }
}

async fn last_seen_of(pool: &AnyPool, node: &str) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT last_seen FROM nodes WHERE node = $1")
        .bind(node)
        .fetch_optional(pool)
        .await?;
    row.map(|r| r.try_get::<i64, _>(0)).transpose()
}

/// Closes this node's open records as `lost`, at the node's last
/// heartbeat (never before the call's own known times).
async fn close_lost(
    pool: &AnyPool,
    node: &str,
    last_seen: Option<i64>,
) -> Result<Vec<LostCall>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, invite_at, answer_at, recording FROM cdrs WHERE node = $1 AND end_at IS NULL",
    )
    .bind(node)
    .fetch_all(pool)
    .await?;
    let mut lost = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        let invite: i64 = r.try_get(1)?;
        let answer: Option<i64> = r.try_get(2)?;
        let recording: Option<String> = r.try_get(3)?;
        let end = last_seen
            .unwrap_or(invite)
            .max(invite)
            .max(answer.unwrap_or(0));
        let duration = answer.map_or(0, |a| end - a);
        sqlx::query(
            "UPDATE cdrs SET end_at = $1, duration_ms = $2, end_reason = 'lost', \
             hung_up_by = 'lost' WHERE id = $3",
        )
        .bind(end)
        .bind(duration)
        .bind(&id)
        .execute(pool)
        .await?;
        lost.push(LostCall { id, recording });
    }
    Ok(lost)
}

/// Deletes records that arrived before `before_ms`; returns how many and
/// the recordings they named.
async fn purge(pool: &AnyPool, before_ms: i64) -> Result<(u64, Vec<String>), sqlx::Error> {
    let rows =
        sqlx::query("SELECT recording FROM cdrs WHERE invite_at < $1 AND recording IS NOT NULL")
            .bind(before_ms)
            .fetch_all(pool)
            .await?;
    let files = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
    let n = sqlx::query("DELETE FROM cdrs WHERE invite_at < $1")
        .bind(before_ms)
        .execute(pool)
        .await?
        .rows_affected();
    Ok((n, files))
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::BadCursor(c.chars().take(80).collect());
    let (at, id) = c.split_once(':').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

fn cdr_of(r: &AnyRow) -> Result<Cdr, StoreError> {
    let detail: String = r.try_get("detail")?;
    let detail = match serde_json::from_str::<serde_json::Value>(&detail) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    Ok(Cdr {
        id: r.try_get("id")?,
        node: r.try_get("node")?,
        uuid: r.try_get("uuid")?,
        call_id: r.try_get("call_id")?,
        direction: r.try_get("direction")?,
        from: r.try_get("from_uri")?,
        to: r.try_get("to_uri")?,
        caller_id: r.try_get("caller_id")?,
        trunk: r.try_get("trunk")?,
        route: r.try_get("route")?,
        agent: r.try_get("agent")?,
        invite_at_unix_ms: r.try_get("invite_at")?,
        answer_at_unix_ms: r.try_get("answer_at")?,
        end_at_unix_ms: r.try_get("end_at")?,
        duration_ms: r.try_get("duration_ms")?,
        end_reason: r.try_get("end_reason")?,
        hung_up_by: r.try_get("hung_up_by")?,
        sip_code: r.try_get("sip_code")?,
        codec: r.try_get("codec")?,
        srtp: r.try_get("srtp")?,
        recording: r.try_get("recording")?,
        amd: r.try_get("amd")?,
        detail,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> StoreConfig {
        StoreConfig {
            url: None,
            keep_days: 30,
            node: "test-node".into(),
        }
    }

    fn start(id: &str, at: i64, route: &str) -> CdrStart {
        CdrStart {
            id: id.into(),
            call_id: format!("{id}@host"),
            direction: Direction::Inbound,
            from: "<sip:1000@x>".into(),
            to: "<sip:agent@y>".into(),
            caller_id: Some("1000".into()),
            trunk: None,
            route: route.into(),
            agent: Some("echo".into()),
            invite_at_ms: at,
        }
    }

    fn end(id: &str, answer: Option<i64>, at: i64) -> CdrEnd {
        CdrEnd {
            id: id.into(),
            uuid: Some("u-1".into()),
            agent: None,
            answer_at_ms: answer,
            end_at_ms: at,
            end_reason: "caller hung up".into(),
            hung_up_by: "caller".into(),
            sip_code: Some(200),
            codec: Some("PCMU".into()),
            srtp: None,
            recording: None,
            amd: Some("machine".into()),
            detail: serde_json::json!({"dtmf": "12#"}),
        }
    }

    #[tokio::test]
    async fn a_call_is_recorded_from_invite_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let (store, opened) = Store::open(&cfg(), dir.path(), now).await.unwrap();
        assert!(opened.lost.is_empty());
        store.call_started(start("c1", now + 10, "agent"));
        store.call_answered("c1", now + 500);
        store.flush().await.unwrap();
        let open = store.get("c1").await.unwrap().unwrap();
        assert_eq!(open.answer_at_unix_ms, Some(now + 500));
        assert_eq!(open.end_at_unix_ms, None);
        store.call_ended(end("c1", Some(now + 500), now + 3500));
        store.flush().await.unwrap();
        let c = store.get("c1").await.unwrap().unwrap();
        assert_eq!(c.duration_ms, Some(3000));
        assert_eq!(c.hung_up_by.as_deref(), Some("caller"));
        assert_eq!(c.sip_code, Some(200));
        assert_eq!(c.detail["dtmf"], "12#");
        assert_eq!(c.amd.as_deref(), Some("machine"));
        assert_eq!(c.node, "test-node");
        assert!(store.get("nope").await.unwrap().is_none());
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&store.inner.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn calls_left_open_by_a_crash_are_lost_at_the_last_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000_000;
        {
            let (store, _) = Store::open(&cfg(), dir.path(), t0).await.unwrap();
            store.call_started(start("a", t0 + 100, "agent"));
            store.call_started(start("b", t0 + 200, "agent"));
            store.call_answered("b", t0 + 300);
            store.call_started(start("done", t0 + 50, "agent"));
            store.call_ended(end("done", None, t0 + 60));
            store.flush().await.unwrap();
            store.heartbeat(t0 + 4000).await.unwrap();
            // Dropped without an end: as after kill -9.
        }
        let (store, opened) = Store::open(&cfg(), dir.path(), t0 + 60_000).await.unwrap();
        let mut ids: Vec<_> = opened.lost.iter().map(|l| l.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        let b = store.get("b").await.unwrap().unwrap();
        assert_eq!(b.end_reason.as_deref(), Some("lost"));
        assert_eq!(b.hung_up_by.as_deref(), Some("lost"));
        assert_eq!(b.end_at_unix_ms, Some(t0 + 4000));
        assert_eq!(b.duration_ms, Some(3700));
        let done = store.get("done").await.unwrap().unwrap();
        assert_eq!(done.end_reason.as_deref(), Some("caller hung up"));
    }

    #[tokio::test]
    async fn listing_filters_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000_000;
        let (store, _) = Store::open(&cfg(), dir.path(), t0).await.unwrap();
        for i in 0..25 {
            let route = if i % 2 == 0 { "even" } else { "odd" };
            store.call_started(start(&format!("c{i:02}"), t0 + i * 1000, route));
        }
        store.flush().await.unwrap();
        let mut seen = Vec::new();
        let mut f = CdrFilter {
            limit: Some(10),
            ..Default::default()
        };
        loop {
            let page = store.list(&f).await.unwrap();
            seen.extend(page.cdrs.iter().map(|c| c.id.clone()));
            match page.next_cursor {
                Some(c) => f.cursor = Some(c),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).rev().map(|i| format!("c{i:02}")).collect();
        assert_eq!(seen, want);
        let evens = store
            .list(&CdrFilter {
                route: Some("even".into()),
                from_ms: Some(t0 + 4000),
                to_ms: Some(t0 + 12_000),
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = evens.cdrs.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c10", "c08", "c06", "c04"]);
        assert!(matches!(
            store
                .list(&CdrFilter {
                    cursor: Some("x".into()),
                    ..Default::default()
                })
                .await,
            Err(StoreError::BadCursor(_))
        ));
    }

    #[tokio::test]
    async fn retention_deletes_old_records_and_names_their_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let t0 = 1_800_000_000_000;
        {
            let (store, _) = Store::open(&cfg(), dir.path(), t0).await.unwrap();
            store.call_started(start("old", t0, "agent"));
            let mut e = end("old", None, t0 + 10);
            e.recording = Some("/rec/old.wav".into());
            store.call_ended(e);
            store.call_started(start("new", t0 + 20 * day, "agent"));
            store.flush().await.unwrap();
        }
        let (store, opened) = Store::open(&cfg(), dir.path(), t0 + 31 * day)
            .await
            .unwrap();
        assert_eq!(opened.purged, 1);
        assert_eq!(opened.purged_recordings, ["/rec/old.wav"]);
        assert!(store.get("old").await.unwrap().is_none());
        assert!(store.get("new").await.unwrap().is_some());
    }
}
