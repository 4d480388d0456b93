-- The change feed: one row per thing a transaction changed (a document, an experiment, a setting, a model's
-- versions), written in that transaction. Processes over the same database poll it from the last sequence they
-- applied. `origin` is the writing process's random id, so that it can skip its own changes.

CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL CHECK (kind IN ('document', 'experiment', 'setting', 'model')),
    key     TEXT NOT NULL,
    origin  TEXT NOT NULL,
    at      TEXT NOT NULL
) STRICT;

CREATE INDEX changes_by_time ON changes (at);
