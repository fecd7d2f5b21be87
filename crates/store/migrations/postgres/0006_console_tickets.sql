-- Console tickets (issue 17, docs/console.md): only the SHA-256 of a ticket is stored, bound to
-- a user and a VM, valid until `expires_at`, consumed once (`used_at`). Any infinibay process on
-- this database can redeem a ticket another one minted. A deleted user or VM takes its tickets.
CREATE TABLE console_tickets (
    hash       BYTEA PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX console_tickets_expires ON console_tickets (expires_at);
CREATE INDEX console_tickets_user ON console_tickets (user_id);
CREATE INDEX console_tickets_vm ON console_tickets (vm_id);
