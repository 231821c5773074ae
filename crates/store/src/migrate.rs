//! A small migration runner: numbered SQL files per engine, embedded in the binary, each applied
//! once inside its own transaction and recorded in `schema_migrations`.

use sqlx::{AnyPool, Row};

use crate::{Backend, Result, StoreError};

struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../migrations/sqlite/0001_identity.sql"),
        postgres: include_str!("../migrations/postgres/0001_identity.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../migrations/sqlite/0002_security.sql"),
        postgres: include_str!("../migrations/postgres/0002_security.sql"),
    },
    Migration {
        version: 3,
        sqlite: include_str!("../migrations/sqlite/0003_jobs.sql"),
        postgres: include_str!("../migrations/postgres/0003_jobs.sql"),
    },
    Migration {
        version: 4,
        sqlite: include_str!("../migrations/sqlite/0004_profile.sql"),
        postgres: include_str!("../migrations/postgres/0004_profile.sql"),
    },
    Migration {
        version: 5,
        sqlite: include_str!("../migrations/sqlite/0005_exports.sql"),
        postgres: include_str!("../migrations/postgres/0005_exports.sql"),
    },
    Migration {
        version: 6,
        sqlite: include_str!("../migrations/sqlite/0006_recovery.sql"),
        postgres: include_str!("../migrations/postgres/0006_recovery.sql"),
    },
    Migration {
        version: 7,
        sqlite: include_str!("../migrations/sqlite/0007_passkeys.sql"),
        postgres: include_str!("../migrations/postgres/0007_passkeys.sql"),
    },
    Migration {
        version: 8,
        sqlite: include_str!("../migrations/sqlite/0008_cloud.sql"),
        postgres: include_str!("../migrations/postgres/0008_cloud.sql"),
    },
    Migration {
        version: 9,
        sqlite: include_str!("../migrations/sqlite/0009_files.sql"),
        postgres: include_str!("../migrations/postgres/0009_files.sql"),
    },
    Migration {
        version: 10,
        sqlite: include_str!("../migrations/sqlite/0010_app_passwords.sql"),
        postgres: include_str!("../migrations/postgres/0010_app_passwords.sql"),
    },
    Migration {
        version: 11,
        sqlite: include_str!("../migrations/sqlite/0011_media.sql"),
        postgres: include_str!("../migrations/postgres/0011_media.sql"),
    },
    Migration {
        version: 12,
        sqlite: include_str!("../migrations/sqlite/0012_devices.sql"),
        postgres: include_str!("../migrations/postgres/0012_devices.sql"),
    },
    Migration {
        version: 13,
        sqlite: include_str!("../migrations/sqlite/0013_command_seq.sql"),
        postgres: include_str!("../migrations/postgres/0013_command_seq.sql"),
    },
    Migration {
        version: 14,
        sqlite: include_str!("../migrations/sqlite/0014_sparse_item_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0014_sparse_item_indexes.sql"),
    },
    Migration {
        version: 15,
        sqlite: include_str!("../migrations/sqlite/0015_device_link_requests.sql"),
        postgres: include_str!("../migrations/postgres/0015_device_link_requests.sql"),
    },
    Migration {
        version: 16,
        sqlite: include_str!("../migrations/sqlite/0016_maintenance_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0016_maintenance_indexes.sql"),
    },
    Migration {
        version: 17,
        sqlite: include_str!("../migrations/sqlite/0017_recycle_bin_pages.sql"),
        postgres: include_str!("../migrations/postgres/0017_recycle_bin_pages.sql"),
    },
    Migration {
        version: 18,
        sqlite: include_str!("../migrations/sqlite/0018_gallery_timeline.sql"),
        postgres: include_str!("../migrations/postgres/0018_gallery_timeline.sql"),
    },
    Migration {
        version: 19,
        sqlite: include_str!("../migrations/sqlite/0019_gallery_albums.sql"),
        postgres: include_str!("../migrations/postgres/0019_gallery_albums.sql"),
    },
    Migration {
        version: 20,
        sqlite: include_str!("../migrations/sqlite/0020_lost_device_located.sql"),
        postgres: include_str!("../migrations/postgres/0020_lost_device_located.sql"),
    },
    Migration {
        version: 21,
        sqlite: include_str!("../migrations/sqlite/0021_storage_notices.sql"),
        postgres: include_str!("../migrations/postgres/0021_storage_notices.sql"),
    },
    Migration {
        version: 22,
        sqlite: include_str!("../migrations/sqlite/0022_recovery_requests.sql"),
        postgres: include_str!("../migrations/postgres/0022_recovery_requests.sql"),
    },
    Migration {
        version: 23,
        sqlite: include_str!("../migrations/sqlite/0023_device_notices.sql"),
        postgres: include_str!("../migrations/postgres/0023_device_notices.sql"),
    },
    Migration {
        version: 24,
        sqlite: include_str!("../migrations/sqlite/0024_sessions_revoked.sql"),
        postgres: include_str!("../migrations/postgres/0024_sessions_revoked.sql"),
    },
    Migration {
        version: 25,
        sqlite: include_str!("../migrations/sqlite/0025_backups.sql"),
        postgres: include_str!("../migrations/postgres/0025_backups.sql"),
    },
    Migration {
        version: 26,
        sqlite: include_str!("../migrations/sqlite/0026_operator_log.sql"),
        postgres: include_str!("../migrations/postgres/0026_operator_log.sql"),
    },
    Migration {
        version: 27,
        sqlite: include_str!("../migrations/sqlite/0027_oidc.sql"),
        postgres: include_str!("../migrations/postgres/0027_oidc.sql"),
    },
    Migration {
        version: 28,
        sqlite: include_str!("../migrations/sqlite/0028_commerce.sql"),
        postgres: include_str!("../migrations/postgres/0028_commerce.sql"),
    },
    Migration {
        version: 29,
        sqlite: include_str!("../migrations/sqlite/0029_feedback.sql"),
        postgres: include_str!("../migrations/postgres/0029_feedback.sql"),
    },
    Migration {
        version: 30,
        sqlite: include_str!("../migrations/sqlite/0030_themes.sql"),
        postgres: include_str!("../migrations/postgres/0030_themes.sql"),
    },
];

/// An arbitrary constant identifying Mica's migration lock on PostgreSQL.
const PG_LOCK_KEY: i64 = 0x006d_6963_616d_6967;

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<Vec<i64>> {
    let mut conn = pool.acquire().await?;
    // The lock first: PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against another node
    // creating the same table at the same moment (a unique violation in its catalog).
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let result = async {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        apply(&mut conn, backend, i64::MAX).await
    }
    .await;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    result
}

/// Applies the migrations not yet applied, up to version `upto`.
async fn apply(conn: &mut sqlx::AnyConnection, backend: Backend, upto: i64) -> Result<Vec<i64>> {
    use sqlx::Connection;
    let done: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("version"))
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if done.contains(&m.version) || m.version > upto {
            continue;
        }
        let sql = match backend {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Migration {
                version: m.version,
                source,
            })?;
        let now = mica_core::SystemClock.now_millis();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(m.version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, "applied schema migration");
        applied.push(m.version);
    }
    Ok(applied)
}

trait NowMillis {
    fn now_millis(&self) -> i64;
}

impl NowMillis for mica_core::SystemClock {
    fn now_millis(&self) -> i64 {
        use mica_core::Clock;
        self.now().millis()
    }
}

#[cfg(test)]
mod tests {
    use super::{apply, MIGRATIONS};
    use crate::Backend;
    use sqlx::{Connection, Row};

    /// A migration file that is not in the list would never run: its change would exist only
    /// in the repository. Every file of each engine is registered, under the version its name
    /// carries, and the versions run in order.
    #[test]
    fn every_migration_file_is_registered() {
        for engine in ["sqlite", "postgres"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(engine);
            let mut versions: Vec<i64> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    name.split('_').next().unwrap().parse().unwrap()
                })
                .collect();
            versions.sort_unstable();
            let registered: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
            assert_eq!(versions, registered, "{engine}");
        }
    }

    /// Migration 18 places a database's existing photos on the timeline: by the device's time,
    /// else the file's, else undated (last); nothing else, and no deleted item, is placed.
    /// Migration 19 marks the existing gallery for its albums to be indexed.
    #[tokio::test]
    async fn existing_photos_are_placed_on_the_timeline() {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        apply(&mut conn, Backend::Sqlite, 17).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO accounts (id, email_bidx, password_hash, password_changed_at, created_at) \
               VALUES (1, x'01', 'h', 0, 0); \
             INSERT INTO collections (account_id, id, kind, name, created_at, purged_seq) VALUES \
               (1, 'photos', 'gallery', 'Photos', 0, 0), (1, 'notes', 'notes', 'Notes', 0, 0); \
             INSERT INTO media (account_id, file_id, status, attempts, taken_at, created_at) VALUES \
               (1, 'f_read', 'done', 1, 50, 0), (1, 'f_waiting', 'pending', 0, NULL, 0); \
             INSERT INTO items (account_id, collection_id, id, seq, modified_at, deleted_at, size, starts_at, file_id) VALUES \
               (1, 'photos', 'own_time', 1, 0, NULL, 1, 100, 'f_read'), \
               (1, 'photos', 'file_time', 2, 0, NULL, 1, NULL, 'f_read'), \
               (1, 'photos', 'waiting', 3, 0, NULL, 1, NULL, 'f_waiting'), \
               (1, 'photos', 'no_file', 4, 0, NULL, 1, NULL, NULL), \
               (1, 'photos', 'deleted', 5, 0, 9, 0, NULL, NULL), \
               (1, 'notes', 'note', 6, 0, NULL, 1, 70, NULL);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            apply(&mut conn, Backend::Sqlite, i64::MAX).await.unwrap(),
            MIGRATIONS
                .iter()
                .map(|m| m.version)
                .filter(|v| *v > 17)
                .collect::<Vec<_>>()
        );
        let placed: Vec<(String, Option<i64>)> =
            sqlx::query("SELECT id, timeline_at FROM items ORDER BY seq")
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("id"), r.get("timeline_at")))
                .collect();
        let expected = [
            ("own_time", Some(100)),
            ("file_time", Some(50)),
            ("waiting", Some(i64::MIN)),
            ("no_file", Some(i64::MIN)),
            ("deleted", None),
            ("note", None),
        ];
        assert_eq!(
            placed,
            expected.map(|(id, at)| (id.to_owned(), at)).to_vec()
        );
        // Migration 19: the existing gallery's albums wait to be read from its bodies.
        let pending: Vec<String> = sqlx::query("SELECT collection_id FROM album_backfill")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("collection_id"))
            .collect();
        assert_eq!(pending, ["photos"]);
    }
}
