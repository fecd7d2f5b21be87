-- Times are INTEGER milliseconds since the Unix epoch (UTC); JSON is TEXT.

CREATE TABLE vms (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    -- 'id' (default), 'agent' (the agent's host name) or 'user' (chosen by a person).
    name_source TEXT NOT NULL DEFAULT 'id',
    -- Refers to a users table a later migration adds.
    owner_id    INTEGER,
    department  TEXT,
    status      TEXT NOT NULL DEFAULT 'offline',
    last_seen   INTEGER,
    agent       TEXT,
    created_at  INTEGER NOT NULL
);

-- Numbers only: the ~1 KB detail of each sample lives in vm_latest_sample (newest per VM).
CREATE TABLE metric_samples (
    vm_id             TEXT NOT NULL,
    at                INTEGER NOT NULL,
    guest_time        INTEGER,
    cpu               REAL NOT NULL,
    mem_used_kb       INTEGER NOT NULL,
    mem_total_kb      INTEGER NOT NULL,
    swap_used_kb      INTEGER,
    disk_used_percent REAL,
    disk_read_bps     REAL NOT NULL,
    disk_write_bps    REAL NOT NULL,
    net_rx_bps        REAL NOT NULL,
    net_tx_bps        REAL NOT NULL,
    load1             REAL NOT NULL
);
CREATE INDEX metric_samples_vm_at ON metric_samples (vm_id, at);
-- Rollups and pruning walk time ranges over all VMs; appends go to the right edge, so this
-- index is cheap to maintain.
CREATE INDEX metric_samples_at ON metric_samples (at);

CREATE TABLE vm_latest_sample (
    vm_id             TEXT PRIMARY KEY NOT NULL,
    at                INTEGER NOT NULL,
    guest_time        INTEGER,
    cpu               REAL NOT NULL,
    mem_used_kb       INTEGER NOT NULL,
    mem_total_kb      INTEGER NOT NULL,
    swap_used_kb      INTEGER,
    disk_used_percent REAL,
    disk_read_bps     REAL NOT NULL,
    disk_write_bps    REAL NOT NULL,
    net_rx_bps        REAL NOT NULL,
    net_tx_bps        REAL NOT NULL,
    load1             REAL NOT NULL,
    detail            TEXT NOT NULL
);

CREATE TABLE metric_minute (
    vm_id           TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    samples         INTEGER NOT NULL,
    cpu_avg         REAL NOT NULL,
    cpu_min         REAL NOT NULL,
    cpu_max         REAL NOT NULL,
    mem_used_kb_avg REAL NOT NULL,
    mem_total_kb    INTEGER NOT NULL,
    disk_read_bps   REAL NOT NULL,
    disk_write_bps  REAL NOT NULL,
    net_rx_bps      REAL NOT NULL,
    net_tx_bps      REAL NOT NULL,
    PRIMARY KEY (vm_id, bucket)
);
CREATE INDEX metric_minute_bucket ON metric_minute (bucket);

CREATE TABLE metric_hour (
    vm_id           TEXT NOT NULL,
    bucket          INTEGER NOT NULL,
    samples         INTEGER NOT NULL,
    cpu_avg         REAL NOT NULL,
    cpu_min         REAL NOT NULL,
    cpu_max         REAL NOT NULL,
    mem_used_kb_avg REAL NOT NULL,
    mem_total_kb    INTEGER NOT NULL,
    disk_read_bps   REAL NOT NULL,
    disk_write_bps  REAL NOT NULL,
    net_rx_bps      REAL NOT NULL,
    net_tx_bps      REAL NOT NULL,
    PRIMARY KEY (vm_id, bucket)
);
CREATE INDEX metric_hour_bucket ON metric_hour (bucket);

-- Rollups are done up to (excluding) done_until; inserts of older samples lower it.
CREATE TABLE rollup_state (
    tier       TEXT PRIMARY KEY NOT NULL,
    done_until INTEGER
);
INSERT INTO rollup_state (tier, done_until) VALUES ('minute', NULL), ('hour', NULL);

CREATE TABLE vm_inventory (
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    items_hash  INTEGER NOT NULL,
    items       TEXT NOT NULL,
    PRIMARY KEY (vm_id, kind)
);

CREATE TABLE service_history (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    service    TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX service_history_vm ON service_history (vm_id, at);

CREATE TABLE command_log (
    id          TEXT PRIMARY KEY NOT NULL,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    user_id     INTEGER,
    kind        TEXT NOT NULL,
    command     TEXT NOT NULL,
    response    TEXT,
    success     INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX command_log_vm ON command_log (vm_id, created_at);

CREATE TABLE vm_errors (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id   TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    code    TEXT,
    message TEXT NOT NULL,
    details TEXT
);
CREATE INDEX vm_errors_vm ON vm_errors (vm_id, at);
