-- A lost device that reports where it is: when its owner was last told (at most once an hour).
ALTER TABLE devices ADD COLUMN located_notice_at BIGINT;
