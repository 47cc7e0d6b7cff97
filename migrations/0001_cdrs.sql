-- Call detail records: one row per call, created at the INVITE and
-- completed at the end. Portable SQL: the same file runs on SQLite and
-- PostgreSQL (TEXT and BIGINT only; times are Unix milliseconds).
CREATE TABLE cdrs (
    id          TEXT PRIMARY KEY,
    node        TEXT NOT NULL,
    uuid        TEXT,
    call_id     TEXT NOT NULL,
    direction   TEXT NOT NULL,
    from_uri    TEXT NOT NULL,
    to_uri      TEXT NOT NULL,
    caller_id   TEXT,
    trunk       TEXT,
    route       TEXT NOT NULL,
    agent       TEXT,
    invite_at   BIGINT NOT NULL,
    answer_at   BIGINT,
    end_at      BIGINT,
    duration_ms BIGINT,
    end_reason  TEXT,
    hung_up_by  TEXT,
    sip_code    BIGINT,
    codec       TEXT,
    srtp        TEXT,
    recording   TEXT,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX cdrs_by_time ON cdrs (invite_at, id);
CREATE INDEX cdrs_by_route ON cdrs (route, invite_at);
CREATE INDEX cdrs_open ON cdrs (node) WHERE end_at IS NULL;

-- Each node's heartbeat: a call left open by a crash ends at its node's
-- last heartbeat.
CREATE TABLE nodes (
    node       TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
