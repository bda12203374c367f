-- Cleanup finds expired rows through this index, in bounded batches, without a full scan.
CREATE INDEX IF NOT EXISTS whatsapp_keys_expires_at_idx
    ON whatsapp_keys (expires_at)
    WHERE expires_at IS NOT NULL;
