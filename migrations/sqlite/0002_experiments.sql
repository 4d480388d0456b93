-- Live experiments: their definition, what each search under an experiment showed (exposures), what users did
-- with it (feedback), and what a shadow arm would have shown. Timestamps are RFC 3339 UTC text.

CREATE TABLE experiments (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    mode        TEXT NOT NULL CHECK (mode IN ('ab', 'interleave', 'shadow')),
    status      TEXT NOT NULL CHECK (status IN ('draft', 'running', 'paused', 'stopped', 'archived')),
    -- JSON array of {"name", "model", "weight"}; the first arm is the control (and the served arm in shadow mode).
    arms        TEXT NOT NULL,
    salt        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    started_at  TEXT,
    stopped_at  TEXT
) STRICT;

-- At most one default experiment.
CREATE UNIQUE INDEX experiments_one_default ON experiments (is_default) WHERE is_default = 1;

CREATE TABLE exposures (
    request_id     TEXT PRIMARY KEY NOT NULL,
    experiment_id  TEXT NOT NULL REFERENCES experiments (id),
    unit_id        TEXT NOT NULL,
    -- The arm that served (ab, shadow); NULL for interleaving, where every item has its team.
    arm            TEXT,
    query          TEXT NOT NULL,
    latency_ms     REAL NOT NULL,
    created_at     TEXT NOT NULL
) STRICT;

CREATE INDEX exposures_by_experiment ON exposures (experiment_id, arm);

-- The results shown, with their 1-based positions and the arm (team) that contributed each.
CREATE TABLE exposure_items (
    request_id  TEXT NOT NULL REFERENCES exposures (request_id),
    position    INTEGER NOT NULL,
    doc_id      TEXT NOT NULL,
    team        TEXT NOT NULL,
    PRIMARY KEY (request_id, doc_id)
) STRICT;

CREATE TABLE feedback (
    request_id  TEXT NOT NULL REFERENCES exposures (request_id),
    doc_id      TEXT NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('click', 'conversion')),
    -- The position the document was shown at (from the exposure, not from the client).
    position    INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (request_id, doc_id, event)
) STRICT;

-- In shadow mode, what the shadow arm returned for the same request, and how much it overlaps the served list.
CREATE TABLE shadow_results (
    request_id     TEXT PRIMARY KEY NOT NULL,
    experiment_id  TEXT NOT NULL REFERENCES experiments (id),
    arm            TEXT NOT NULL,
    doc_ids        TEXT NOT NULL,
    jaccard        REAL NOT NULL,
    rbo            REAL NOT NULL,
    latency_ms     REAL NOT NULL,
    created_at     TEXT NOT NULL
) STRICT;

CREATE INDEX shadow_results_by_experiment ON shadow_results (experiment_id);
