-- The model registry: every version of every model the server has served or is preparing, with its life-cycle
-- state, and the history of its state changes. A restart serves the same set and versions from it.
-- Timestamps are RFC 3339 UTC text.

CREATE TABLE model_versions (
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    -- The manifest folder it was loaded from.
    path         TEXT NOT NULL,
    state        TEXT NOT NULL
                 CHECK (state IN ('loading', 'backfilling', 'ready', 'draining', 'retired', 'failed')),
    reason       TEXT,
    -- When it entered its state.
    since        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    retired_at   TEXT,
    -- When the embeddings of a retired version were removed (it can no longer be rolled back to).
    purged_at    TEXT,
    PRIMARY KEY (model, version)
) STRICT;

-- At most one serving (ready) version per model.
CREATE UNIQUE INDEX model_versions_one_serving ON model_versions (model) WHERE state = 'ready';

CREATE TABLE model_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    model    TEXT NOT NULL,
    version  TEXT NOT NULL,
    state    TEXT NOT NULL,
    reason   TEXT,
    at       TEXT NOT NULL
) STRICT;

CREATE INDEX model_events_by_model ON model_events (model, seq);

-- Server-wide settings changed at run time: `default_model` (set by promoting an experiment's winner) and
-- `config_models` (the models of the config file as last applied, a JSON object name → path).
CREATE TABLE settings (
    key    TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
) STRICT;
