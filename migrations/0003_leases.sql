-- One writer per company (issue 11): a lease row per company, held by one store process at a
-- time. It is a plain row with a heartbeat and an expiry, not a session-level advisory lock, so
-- it works behind pgbouncer in transaction mode. Every takeover increments `token` (the fencing
-- token); a write of a leased company only lands while the row still carries the writer's
-- token. Rows are never deleted by the store: a clean release sets `expires_at` and
-- `released_at`, and the token keeps counting up across holders.
--
-- Operators: who holds what
--   SELECT company_id, holder_host, holder_pid, holder_instance, acquired_at, expires_at
--   FROM authstate_leases WHERE expires_at > now() ORDER BY holder_host, holder_pid;
CREATE TABLE IF NOT EXISTS authstate_leases (
    company_id        text PRIMARY KEY,
    holder_host       text NOT NULL,
    holder_pid        integer NOT NULL,
    holder_instance   text NOT NULL,
    holder_started_at timestamptz NOT NULL,
    token             bigint NOT NULL,
    acquired_at       timestamptz NOT NULL,
    heartbeat_at      timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    released_at       timestamptz
) WITH (fillfactor = 70);
-- fillfactor: every heartbeat rewrites every held row; free room on the page keeps those
-- updates HOT (no index column changes), so the table and its index do not bloat.
