-- Cheaper rewrites of keys: a storage setting only. No row is rewritten (it applies to pages
-- filled from now on) and the lock taken, SHARE UPDATE EXCLUSIVE on whatsapp_keys, lets reads
-- and writes go on.
--
-- A key is rewritten over and over (a session on every message). `expires_at` now moves only
-- once per step (the store rounds it up, at most an hour), so most rewrites touch no indexed
-- column and can be HOT updates (no new index entries, less WAL, less bloat) when the page has
-- room for the new version: fillfactor 70 leaves that room. Measured side by side by
-- node/bench/storage.js on ~1 KB session records: 89 % HOT updates instead of 0 %, a third
-- less WAL and PostgreSQL CPU per key, a third of the size after 8 rewrites.
--
-- Not done, measured in the same benchmark: `ALTER COLUMN value SET STORAGE EXTERNAL` (skip
-- the compression attempt on incompressible base64 over 2 KB) made no repeatable difference
-- and takes ACCESS EXCLUSIVE; `toast_tuple_target = 8160` (keep values up to 8 KB inline)
-- leaves no room for HOT updates of ~4 KB rows and grew the table by half.
SET LOCAL lock_timeout = '5s';
ALTER TABLE whatsapp_keys SET (fillfactor = 70);
