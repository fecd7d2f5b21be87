-- Users, departments and permissions (API). Times are INTEGER ms since the epoch (UTC).

CREATE TABLE departments (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    username            TEXT NOT NULL UNIQUE,
    -- argon2 PHC string; never the password.
    password_hash       TEXT NOT NULL,
    -- 'admin' or 'user'.
    role                TEXT NOT NULL,
    department          TEXT REFERENCES departments (name) ON DELETE SET NULL,
    -- The persistent Socket.IO room of the user (`user_<8>_<random>`).
    namespace           TEXT NOT NULL UNIQUE,
    -- Tokens issued before this instant are refused.
    password_changed_at INTEGER NOT NULL,
    created_at          INTEGER NOT NULL
);

CREATE TABLE user_permissions (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (user_id, permission)
);

CREATE INDEX vms_owner ON vms (owner_id);
