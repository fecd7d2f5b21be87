-- Console tickets (issue 17, docs/console.md): only the SHA-256 of a ticket is stored, bound to
-- a user and a VM, valid until `expires_at`, consumed once (`used_at`). Any infinibay process on
-- this database can redeem a ticket another one minted. A deleted user or VM takes its tickets.
CREATE TABLE console_tickets (
    hash       BLOB PRIMARY KEY NOT NULL,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,           -- ms since the epoch
    used_at    INTEGER                     -- ms since the epoch; NULL until redeemed
) WITHOUT ROWID;
CREATE INDEX console_tickets_expires ON console_tickets (expires_at);
CREATE INDEX console_tickets_user ON console_tickets (user_id);
CREATE INDEX console_tickets_vm ON console_tickets (vm_id);
