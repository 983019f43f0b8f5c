//! The SQLite schema as ordered migrations, embedded in the binary. Version N is `PRAGMA user_version = N`; each
//! migration runs in its own transaction together with the version bump, so a crash leaves the previous version.
//! Migrations are append-only: never edit one that has shipped, add the next.
//!
//! Every table that holds a tenant's rows has a `tenant_id` column, and every query of the back end filters on
//! it. Composite foreign keys (`(tenant_id, app_id) -> apps(tenant_id, id)`) make a cross-tenant reference
//! impossible in the database itself, not only in the code.

pub(super) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "control plane: tenants, apps, numbers, trunks, keys, calls, usage, audit",
        sql: r#"
CREATE TABLE tenants (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    plan          TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'offboarding', 'deleted')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE apps (
    tenant_id         TEXT    NOT NULL REFERENCES tenants (id),
    id                TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('echo', 'stream')),
    stream_url        TEXT,
    auth_header       TEXT,
    codecs            TEXT    NOT NULL,  -- JSON array of "PCMU" / "PCMA"
    custom_parameters TEXT    NOT NULL,  -- JSON array of [key, value]
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name),
    CHECK ((kind = 'stream') = (stream_url IS NOT NULL)),
    CHECK (kind = 'stream' OR auth_header IS NULL)
) STRICT;

-- A number is held by at most one tenant: the primary key is the number alone.
CREATE TABLE numbers (
    number        TEXT    PRIMARY KEY,
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    app_id        TEXT    NOT NULL,
    claimed_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, app_id) REFERENCES apps (tenant_id, id)
) STRICT;
CREATE INDEX numbers_by_tenant ON numbers (tenant_id, number);
CREATE INDEX numbers_by_app ON numbers (tenant_id, app_id);

CREATE TABLE number_releases (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    number         TEXT    NOT NULL,
    app_id         TEXT    NOT NULL,
    claimed_at_ms  INTEGER NOT NULL,
    released_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX number_releases_by_tenant ON number_releases (tenant_id, released_at_ms);

CREATE TABLE trunks (
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    id              TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    allowed_sources TEXT    NOT NULL,  -- JSON array of CIDR strings
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
) STRICT;

-- The prefix is unique across the server: it is how a presented key is found. Only the keyed hash is stored.
CREATE TABLE api_keys (
    prefix          TEXT    PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id),
    name            TEXT    NOT NULL,
    hash            BLOB    NOT NULL CHECK (length(hash) = 32),
    access          TEXT    NOT NULL CHECK (access IN ('read_only', 'read_write')),
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    last_used_at_ms INTEGER,
    revoked_at_ms   INTEGER
) STRICT;
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at_ms);

CREATE TABLE calls (
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    call_sid       TEXT    NOT NULL,
    sip_call_id    TEXT    NOT NULL,
    from_uri       TEXT    NOT NULL,
    to_uri         TEXT    NOT NULL,
    app            TEXT    NOT NULL,
    invite_at_ms   INTEGER NOT NULL,
    answer_at_ms   INTEGER,
    end_at_ms      INTEGER NOT NULL,
    duration_secs  INTEGER NOT NULL CHECK (duration_secs >= 0),
    billable_secs  INTEGER NOT NULL CHECK (billable_secs >= 0),
    usage_day      TEXT    NOT NULL,
    end_reason     TEXT    NOT NULL,
    codec          TEXT    NOT NULL,
    packets_in     INTEGER NOT NULL,
    packets_out    INTEGER NOT NULL,
    packets_lost   INTEGER NOT NULL,
    dtmf_count     INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, call_sid)
) STRICT;
CREATE INDEX calls_by_start ON calls (tenant_id, invite_at_ms, call_sid);

-- Written in the same transaction as each call record: the sum of billable_secs here equals the sum in calls.
CREATE TABLE usage_daily (
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    day           TEXT    NOT NULL,  -- UTC, YYYY-MM-DD
    app           TEXT    NOT NULL,
    number        TEXT    NOT NULL,
    calls         INTEGER NOT NULL CHECK (calls >= 0),
    billable_secs INTEGER NOT NULL CHECK (billable_secs >= 0),
    PRIMARY KEY (tenant_id, day, app, number)
) STRICT;

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT    NOT NULL REFERENCES tenants (id),
    at_ms     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    detail    TEXT    NOT NULL  -- JSON object, never a secret
) STRICT;
CREATE INDEX audit_by_tenant ON audit_log (tenant_id, id);

-- One row: bumped with every change to tenants, apps, numbers or trunks.
CREATE TABLE routing_version (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    version   INTEGER NOT NULL
) STRICT;
INSERT INTO routing_version (singleton, version) VALUES (1, 0);
"#,
    },
    Migration {
        version: 2,
        name: "offboarding jobs",
        sql: r#"
-- One offboarding job per tenant, and what is kept of the tenant once its rows are deleted: the step history, the
-- final invoice and the deletion certificate. No foreign key to tenants: the row outlives the tenant's, and its
-- presence keeps the tenant id from being reused. It holds nothing of any other tenant.
CREATE TABLE offboard_jobs (
    tenant_id         TEXT    PRIMARY KEY,
    started_by        TEXT    NOT NULL,
    step              TEXT    NOT NULL CHECK (step IN ('suspend', 'drain_calls', 'export', 'final_invoice',
                                    'release_numbers', 'revoke_keys', 'delete_rows', 'certificate', 'done')),
    grace_secs        INTEGER NOT NULL CHECK (grace_secs >= 0),
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    finished_at_ms    INTEGER,
    drain_deadline_ms INTEGER,
    steps             TEXT    NOT NULL,  -- JSON array: one object per step (name, started/finished times, detail)
    pending_byes      TEXT,              -- JSON array: BYEs for the calls being drained, sent again after a restart
    export            TEXT,              -- JSON object: file name, bytes, sha256
    final_invoice     TEXT,              -- JSON object
    certificate       TEXT,              -- JSON object
    last_error        TEXT               -- JSON object: step, message, at_ms, attempts
) STRICT;
"#,
    },
    Migration {
        version: 3,
        name: "call transport",
        sql: r#"
-- How each call reached us: a SIP trunk or WebRTC (WHIP). Calls recorded before this migration were all SIP.
ALTER TABLE calls ADD COLUMN transport TEXT NOT NULL DEFAULT 'sip' CHECK (transport IN ('sip', 'webrtc'));
"#,
    },
    Migration {
        version: 4,
        name: "app media format",
        sql: r#"
-- The audio format of each app's provider stream (`MediaFormat::name`): apps made before this migration stream
-- µ-law 8 kHz, as they always did. No CHECK on the names: adding a format then needs no table rebuild (SQLite
-- cannot alter a CHECK); a name this binary does not know is reported as corrupt when the row is read.
ALTER TABLE apps ADD COLUMN media_format TEXT NOT NULL DEFAULT 'mulaw_8k';
"#,
    },
];
