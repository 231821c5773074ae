-- The storage level (90 or 100 % of the quota) the owner was last told of; 0 once usage falls
-- below 80 % again.
ALTER TABLE cloud_accounts ADD COLUMN storage_notice BIGINT NOT NULL DEFAULT 0;
