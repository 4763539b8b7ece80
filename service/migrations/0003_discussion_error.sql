-- Honest outcomes (issue 15): why a discussion failed, in words (e.g. every agent turn failed because the key
-- pool is out of balance). NULL for every other outcome.
ALTER TABLE discussions ADD COLUMN error text;
