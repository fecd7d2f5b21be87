-- Retention prunes service history, VM errors and the command log by time over all VMs, a
-- small batch at a time: each needs its time column indexed on its own.
CREATE INDEX service_history_at ON service_history (at);
CREATE INDEX vm_errors_at ON vm_errors (at);
CREATE INDEX command_log_created_at ON command_log (created_at);
