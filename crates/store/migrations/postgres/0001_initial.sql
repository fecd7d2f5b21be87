CREATE TABLE vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- 'id' (default), 'agent' (the agent's host name) or 'user' (chosen by a person).
    name_source TEXT NOT NULL DEFAULT 'id',
    -- Refers to a users table a later migration adds.
    owner_id    BIGINT,
    department  TEXT,
    status      TEXT NOT NULL DEFAULT 'offline',
    last_seen   TIMESTAMPTZ,
    agent       JSONB,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Numbers only: the ~1 KB detail of each sample lives in vm_latest_sample (newest per VM).
-- No foreign key: a per-row key check (and parent row lock) would halve batch throughput;
-- delete_vm removes the rows explicitly.
CREATE TABLE metric_samples (
    vm_id             TEXT NOT NULL,
    at                TIMESTAMPTZ NOT NULL,
    guest_time        TIMESTAMPTZ,
    cpu               DOUBLE PRECISION NOT NULL,
    mem_used_kb       BIGINT NOT NULL,
    mem_total_kb      BIGINT NOT NULL,
    swap_used_kb      BIGINT,
    disk_used_percent DOUBLE PRECISION,
    disk_read_bps     DOUBLE PRECISION NOT NULL,
    disk_write_bps    DOUBLE PRECISION NOT NULL,
    net_rx_bps        DOUBLE PRECISION NOT NULL,
    net_tx_bps        DOUBLE PRECISION NOT NULL,
    load1             DOUBLE PRECISION NOT NULL
);
CREATE INDEX metric_samples_vm_at ON metric_samples (vm_id, at);
CREATE INDEX metric_samples_at ON metric_samples (at);

CREATE TABLE vm_latest_sample (
    vm_id             TEXT PRIMARY KEY,
    at                TIMESTAMPTZ NOT NULL,
    guest_time        TIMESTAMPTZ,
    cpu               DOUBLE PRECISION NOT NULL,
    mem_used_kb       BIGINT NOT NULL,
    mem_total_kb      BIGINT NOT NULL,
    swap_used_kb      BIGINT,
    disk_used_percent DOUBLE PRECISION,
    disk_read_bps     DOUBLE PRECISION NOT NULL,
    disk_write_bps    DOUBLE PRECISION NOT NULL,
    net_rx_bps        DOUBLE PRECISION NOT NULL,
    net_tx_bps        DOUBLE PRECISION NOT NULL,
    load1             DOUBLE PRECISION NOT NULL,
    -- Rewritten for every VM in every batch: json (checked text) is cheaper to write than jsonb.
    detail            JSON NOT NULL
);

CREATE TABLE metric_minute (
    vm_id           TEXT NOT NULL,
    bucket          TIMESTAMPTZ NOT NULL,
    samples         BIGINT NOT NULL,
    cpu_avg         DOUBLE PRECISION NOT NULL,
    cpu_min         DOUBLE PRECISION NOT NULL,
    cpu_max         DOUBLE PRECISION NOT NULL,
    mem_used_kb_avg DOUBLE PRECISION NOT NULL,
    mem_total_kb    BIGINT NOT NULL,
    disk_read_bps   DOUBLE PRECISION NOT NULL,
    disk_write_bps  DOUBLE PRECISION NOT NULL,
    net_rx_bps      DOUBLE PRECISION NOT NULL,
    net_tx_bps      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (vm_id, bucket)
);
CREATE INDEX metric_minute_bucket ON metric_minute (bucket);

CREATE TABLE metric_hour (LIKE metric_minute INCLUDING ALL);

-- Rollups are done up to (excluding) done_until; inserts of older samples lower it.
CREATE TABLE rollup_state (
    tier       TEXT PRIMARY KEY,
    done_until TIMESTAMPTZ
);
INSERT INTO rollup_state (tier, done_until) VALUES ('minute', NULL), ('hour', NULL);

CREATE TABLE vm_inventory (
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    items_hash  BIGINT NOT NULL,
    items       JSONB NOT NULL,
    PRIMARY KEY (vm_id, kind)
);

CREATE TABLE service_history (
    seq        BIGSERIAL PRIMARY KEY,
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    service    TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX service_history_vm ON service_history (vm_id, at);

CREATE TABLE command_log (
    id          TEXT PRIMARY KEY,
    seq         BIGSERIAL NOT NULL,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    user_id     BIGINT,
    kind        TEXT NOT NULL,
    command     JSONB NOT NULL,
    response    JSONB,
    success     BOOLEAN NOT NULL,
    duration_ms BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX command_log_vm ON command_log (vm_id, created_at);

CREATE TABLE vm_errors (
    seq     BIGSERIAL PRIMARY KEY,
    vm_id   TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    at      TIMESTAMPTZ NOT NULL,
    code    TEXT,
    message TEXT NOT NULL,
    details TEXT
);
CREATE INDEX vm_errors_vm ON vm_errors (vm_id, at);
