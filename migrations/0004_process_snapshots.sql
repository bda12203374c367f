-- One row per running store process: a small JSON snapshot of its in-memory metrics, rewritten
-- by the process every 15 s and deleted when it closes cleanly, so `authstate health` on any
-- host sees the live services. A row that stopped being updated belongs to a process that is
-- gone (crashed or killed); the CLI shows it as such and stores delete rows a day old.
CREATE TABLE IF NOT EXISTS authstate_processes (
    instance   text PRIMARY KEY,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    snapshot   jsonb NOT NULL
);
