-- Experiments know model versions: which version of each arm's model served an exposure, which version a shadow
-- arm ran, and the promotion of an experiment's winner.

-- JSON object, arm name -> model version (content hash) of the arms whose ranking was shown: the serving arm in
-- `ab` and `shadow`, both teams when interleaved. '{}' for exposures logged before versions were recorded.
ALTER TABLE exposures ADD COLUMN versions TEXT NOT NULL DEFAULT '{}';

-- The shadow arm's model version; NULL for comparisons logged before versions were recorded.
ALTER TABLE shadow_results ADD COLUMN version TEXT;

-- JSON object {arm, model, version, promoted_at, report}: the arm whose model became the default model when the
-- experiment was stopped, on the evidence of its report at that moment. NULL until promoted (at most once).
ALTER TABLE experiments ADD COLUMN promotion TEXT;
