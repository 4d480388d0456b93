-- A human rater's relevance grade (0 to 10) on a feedback event, NULL when none was given; sending the same
-- event again with a grade replaces it. Graded feedback exports as a qrels file.
ALTER TABLE feedback ADD COLUMN grade REAL;
