-- Documents of the shared corpus and their embeddings per (model, model version).
-- Timestamps are RFC 3339 UTC text; vectors are little-endian f32 blobs.

CREATE TABLE documents (
    id           TEXT PRIMARY KEY NOT NULL,
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    -- SHA-256 of the text: an embedding is valid only for the text it was computed from.
    content_hash TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE TABLE embeddings (
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    document_id   TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    content_hash  TEXT NOT NULL,
    dimension     INTEGER NOT NULL,
    vector        BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (model, model_version, document_id)
) STRICT;

CREATE INDEX embeddings_by_document ON embeddings (document_id);
