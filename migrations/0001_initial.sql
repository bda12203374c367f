-- The two tables production already has. On a database where they exist (created by hand,
-- with live rows) every statement here is a no-op or a catalog-only change: no row is
-- rewritten or copied.
CREATE TABLE IF NOT EXISTS whatsapp_auth (
    company_id text PRIMARY KEY,
    creds      jsonb NOT NULL,
    updated_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS whatsapp_keys (
    company_id text NOT NULL,
    key_type   text NOT NULL,
    key_id     text NOT NULL,
    value      jsonb NOT NULL,
    updated_at timestamptz DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (company_id, key_type, key_id)
);

-- Older hand-made tables may miss these columns; adding a nullable column without a volatile
-- default only touches the catalog.
ALTER TABLE whatsapp_auth ADD COLUMN IF NOT EXISTS updated_at timestamptz;
ALTER TABLE whatsapp_keys ADD COLUMN IF NOT EXISTS updated_at timestamptz;
ALTER TABLE whatsapp_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;

-- Upserts need a unique index on (company_id, key_type, key_id); a hand-made table that has
-- neither that primary key nor such a unique constraint gets one.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        WHERE i.indrelid = 'whatsapp_keys'::regclass
          AND i.indisunique
          AND i.indnkeyatts = 3
          AND (SELECT array_agg(a.attname::text ORDER BY k.ord)
               FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
              = ARRAY['company_id', 'key_type', 'key_id']
    ) THEN
        CREATE UNIQUE INDEX whatsapp_keys_company_type_id_key
            ON whatsapp_keys (company_id, key_type, key_id);
    END IF;
END
$$;
