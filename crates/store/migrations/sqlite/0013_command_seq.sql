-- A command is issued in one statement (INSERT … SELECT, its seq the device's counter plus one);
-- SQLite cannot update another table in that statement, so this trigger keeps the counter equal
-- to the newest command's seq, as PostgreSQL's statement does itself. The UPDATE first brings
-- counters up to date for commands issued before the trigger existed.
UPDATE devices SET command_seq = (SELECT MAX(seq) FROM device_commands c WHERE c.device_id = devices.id)
WHERE command_seq < (SELECT COALESCE(MAX(seq), 0) FROM device_commands c WHERE c.device_id = devices.id);

CREATE TRIGGER device_commands_seq AFTER INSERT ON device_commands
BEGIN
    UPDATE devices SET command_seq = NEW.seq WHERE id = NEW.device_id AND command_seq < NEW.seq;
END;
