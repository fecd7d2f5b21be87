-- Alert rules (set by administrators, for one VM or every VM), the alerts the host's engine
-- raises and resolves, and the collection settings each VM's agent is sent as `configure`.
-- No foreign keys: `delete_vm` removes a VM's rows itself, and alerts outlive the rule that
-- raised them (history).

CREATE TABLE alert_rules (
    id            TEXT PRIMARY KEY,
    seq           BIGSERIAL NOT NULL,
    -- NULL: every VM.
    vm_id         TEXT,
    -- 'cpu', 'memory', 'disk', 'agent_offline' or 'guest_error'.
    kind          TEXT NOT NULL,
    threshold     DOUBLE PRECISION,
    mount_point   TEXT,
    duration_secs BIGINT NOT NULL,
    webhook_urls  JSONB NOT NULL,
    created_by    BIGINT,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX alert_rules_vm ON alert_rules (vm_id);

CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    seq         BIGSERIAL NOT NULL,
    rule_id     TEXT NOT NULL,
    vm_id       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT,
    message     TEXT NOT NULL,
    value       DOUBLE PRECISION,
    threshold   DOUBLE PRECISION,
    raised_at   TIMESTAMPTZ NOT NULL,
    -- NULL while open.
    resolved_at TIMESTAMPTZ
);
CREATE INDEX alerts_vm ON alerts (vm_id, raised_at);
CREATE INDEX alerts_raised_at ON alerts (raised_at);
-- Retention prunes resolved alerts by this column; open ones (NULL) are never pruned.
CREATE INDEX alerts_resolved_at ON alerts (resolved_at);

CREATE TABLE vm_telemetry (
    vm_id         TEXT PRIMARY KEY,
    interval_secs BIGINT NOT NULL,
    collectors    JSONB NOT NULL,
    updated_by    BIGINT,
    updated_at    TIMESTAMPTZ NOT NULL,
    applied_at    TIMESTAMPTZ
);
