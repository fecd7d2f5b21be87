-- Alert rules (set by administrators, for one VM or every VM), the alerts the host's engine
-- raises and resolves, and the collection settings each VM's agent is sent as `configure`.
-- Times are INTEGER ms since the epoch; JSON is TEXT. No foreign keys: `delete_vm` removes a
-- VM's rows itself, and alerts outlive the rule that raised them (history).

CREATE TABLE alert_rules (
    id            TEXT PRIMARY KEY NOT NULL,
    -- NULL: every VM.
    vm_id         TEXT,
    -- 'cpu', 'memory', 'disk', 'agent_offline' or 'guest_error'.
    kind          TEXT NOT NULL,
    threshold     REAL,
    mount_point   TEXT,
    duration_secs INTEGER NOT NULL,
    -- JSON array of http(s) URLs.
    webhook_urls  TEXT NOT NULL,
    created_by    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX alert_rules_vm ON alert_rules (vm_id);

CREATE TABLE alerts (
    id          TEXT PRIMARY KEY NOT NULL,
    rule_id     TEXT NOT NULL,
    vm_id       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT,
    message     TEXT NOT NULL,
    value       REAL,
    threshold   REAL,
    raised_at   INTEGER NOT NULL,
    -- NULL while open.
    resolved_at INTEGER
);
CREATE INDEX alerts_vm ON alerts (vm_id, raised_at);
CREATE INDEX alerts_raised_at ON alerts (raised_at);
-- Retention prunes resolved alerts by this column; open ones (NULL) are never pruned.
CREATE INDEX alerts_resolved_at ON alerts (resolved_at);

CREATE TABLE vm_telemetry (
    vm_id         TEXT PRIMARY KEY NOT NULL,
    interval_secs INTEGER NOT NULL,
    -- JSON array of the collectors that run.
    collectors    TEXT NOT NULL,
    updated_by    INTEGER,
    updated_at    INTEGER NOT NULL,
    applied_at    INTEGER
);
