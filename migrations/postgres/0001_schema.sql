-- The whole schema of the PostgreSQL store: the same tables, constraints and indexes as migrations/sqlite
-- 0001-0005, in PostgreSQL's types. Every text column uses the "C" collation, so that ordering and range
-- comparisons (paging by id, ordering by name or time) compare bytes exactly as SQLite does, whatever the
-- database's default collation. Timestamps are RFC 3339 UTC text (as in the records); vectors are
-- little-endian f32 bytea; JSON is kept as the text it was written as, so it reads back unchanged.

-- Documents of the shared corpus and their embeddings per (model, model version).
CREATE TABLE documents (
    id           TEXT COLLATE "C" PRIMARY KEY,
    text         TEXT COLLATE "C" NOT NULL,
    metadata     TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    -- SHA-256 of the text: an embedding is valid only for the text it was computed from.
    content_hash TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    updated_at   TEXT COLLATE "C" NOT NULL
);

CREATE TABLE embeddings (
    model         TEXT COLLATE "C" NOT NULL,
    model_version TEXT COLLATE "C" NOT NULL,
    document_id   TEXT COLLATE "C" NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    content_hash  TEXT COLLATE "C" NOT NULL,
    dimension     INTEGER NOT NULL,
    vector        BYTEA NOT NULL,
    created_at    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (model, model_version, document_id)
);

CREATE INDEX embeddings_by_document ON embeddings (document_id);

-- Live experiments: their definition, what each search under an experiment showed (exposures), what users did
-- with it (feedback), and what a shadow arm would have shown.
CREATE TABLE experiments (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    mode        TEXT COLLATE "C" NOT NULL CHECK (mode IN ('ab', 'interleave', 'shadow')),
    status      TEXT COLLATE "C" NOT NULL CHECK (status IN ('draft', 'running', 'paused', 'stopped', 'archived')),
    -- JSON array of {"name", "model", "weight"}; the first arm is the control (and the served arm in shadow mode).
    arms        TEXT COLLATE "C" NOT NULL,
    salt        TEXT COLLATE "C" NOT NULL,
    is_default  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT COLLATE "C" NOT NULL,
    updated_at  TEXT COLLATE "C" NOT NULL,
    started_at  TEXT COLLATE "C",
    stopped_at  TEXT COLLATE "C",
    -- JSON object {arm, model, version, promoted_at, report}: the arm whose model became the default model when
    -- the experiment was stopped. NULL until promoted (at most once).
    promotion   TEXT COLLATE "C"
);

-- At most one default experiment.
CREATE UNIQUE INDEX experiments_one_default ON experiments (is_default) WHERE is_default;

CREATE TABLE exposures (
    request_id     TEXT COLLATE "C" PRIMARY KEY,
    -- Insertion order (SQLite's rowid): a report lists the versions served first first.
    seq            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    experiment_id  TEXT COLLATE "C" NOT NULL REFERENCES experiments (id),
    unit_id        TEXT COLLATE "C" NOT NULL,
    -- The arm that served (ab, shadow); NULL for interleaving, where every item has its team.
    arm            TEXT COLLATE "C",
    query          TEXT COLLATE "C" NOT NULL,
    latency_ms     DOUBLE PRECISION NOT NULL,
    created_at     TEXT COLLATE "C" NOT NULL,
    -- JSON object, arm name -> model version of the arms whose ranking was shown.
    versions       TEXT COLLATE "C" NOT NULL DEFAULT '{}'
);

CREATE INDEX exposures_by_experiment ON exposures (experiment_id, arm);

-- The results shown, with their 1-based positions and the arm (team) that contributed each.
CREATE TABLE exposure_items (
    request_id  TEXT COLLATE "C" NOT NULL REFERENCES exposures (request_id),
    position    INTEGER NOT NULL,
    doc_id      TEXT COLLATE "C" NOT NULL,
    team        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (request_id, doc_id)
);

CREATE TABLE feedback (
    request_id  TEXT COLLATE "C" NOT NULL REFERENCES exposures (request_id),
    doc_id      TEXT COLLATE "C" NOT NULL,
    event       TEXT COLLATE "C" NOT NULL CHECK (event IN ('click', 'conversion')),
    -- The position the document was shown at (from the exposure, not from the client).
    position    INTEGER NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (request_id, doc_id, event)
);

-- In shadow mode, what the shadow arm returned for the same request, and how much it overlaps the served list.
CREATE TABLE shadow_results (
    request_id     TEXT COLLATE "C" PRIMARY KEY,
    seq            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    experiment_id  TEXT COLLATE "C" NOT NULL REFERENCES experiments (id),
    arm            TEXT COLLATE "C" NOT NULL,
    -- JSON array of document ids.
    doc_ids        TEXT COLLATE "C" NOT NULL,
    jaccard        DOUBLE PRECISION NOT NULL,
    rbo            DOUBLE PRECISION NOT NULL,
    latency_ms     DOUBLE PRECISION NOT NULL,
    created_at     TEXT COLLATE "C" NOT NULL,
    -- The shadow arm's model version.
    version        TEXT COLLATE "C"
);

CREATE INDEX shadow_results_by_experiment ON shadow_results (experiment_id);

-- The model registry: every version of every model with its life-cycle state, and its state changes.
CREATE TABLE model_versions (
    model        TEXT COLLATE "C" NOT NULL,
    version      TEXT COLLATE "C" NOT NULL,
    -- The manifest folder it was loaded from.
    path         TEXT COLLATE "C" NOT NULL,
    state        TEXT COLLATE "C" NOT NULL
                 CHECK (state IN ('loading', 'backfilling', 'ready', 'draining', 'retired', 'failed')),
    reason       TEXT COLLATE "C",
    -- When it entered its state.
    since        TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    retired_at   TEXT COLLATE "C",
    -- When the embeddings of a retired version were removed (it can no longer be rolled back to).
    purged_at    TEXT COLLATE "C",
    PRIMARY KEY (model, version)
);

-- At most one serving (ready) version per model.
CREATE UNIQUE INDEX model_versions_one_serving ON model_versions (model) WHERE state = 'ready';

CREATE TABLE model_events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model    TEXT COLLATE "C" NOT NULL,
    version  TEXT COLLATE "C" NOT NULL,
    state    TEXT COLLATE "C" NOT NULL,
    reason   TEXT COLLATE "C",
    at       TEXT COLLATE "C" NOT NULL
);

CREATE INDEX model_events_by_model ON model_events (model, seq);

-- Server-wide settings changed at run time (`default_model`, `config_models`).
CREATE TABLE settings (
    key    TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT COLLATE "C" NOT NULL
);

-- The change feed: one row per thing a transaction changed, written in that transaction. The sequence keeps its
-- default cache of 1 and is drawn while the writer holds the feed's advisory lock (see the store), so that
-- sequence order is commit order.
CREATE TABLE changes (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind    TEXT COLLATE "C" NOT NULL CHECK (kind IN ('document', 'experiment', 'setting', 'model')),
    key     TEXT COLLATE "C" NOT NULL,
    origin  TEXT COLLATE "C" NOT NULL,
    at      TEXT COLLATE "C" NOT NULL
);

CREATE INDEX changes_by_time ON changes (at);
