-- Nothing to change on PostgreSQL: issuing a command updates the device's counter in the same
-- statement (a data-modifying CTE). The SQLite side of this version adds a trigger for that.
SELECT 1;
