-- Journal durability (issue 10): a lease row records the host whose journal may hold
-- acknowledged writes of the company that are not yet in PostgreSQL. A store in journal
-- durability writes its host name here when it takes the lease; a clean release (everything
-- flushed) sets it back to NULL. While it is set, only a store on that host may take the lease
-- over, even after it expired: that store replays the journal first. An operator whose host is
-- lost for good releases it by force (`authstate lease release --force COMPANY`, or the SQL
-- below), accepting that those writes are lost.
--
--   UPDATE authstate_leases SET token = token + 1, expires_at = now(), released_at = now(),
--          journal_host = NULL WHERE company_id = 'COMPANY';
--
-- Adding a nullable column without a default changes the catalog only: no row is rewritten.
-- It takes ACCESS EXCLUSIVE on authstate_leases for that instant; lock_timeout keeps it from
-- queueing (and blocking heartbeats behind it) for longer than 5 s.
SET LOCAL lock_timeout = '5s';
ALTER TABLE authstate_leases ADD COLUMN IF NOT EXISTS journal_host text;
