//! A PostgreSQL database of a test's own (127.0.0.1:5432, user postgres, trust).

use sqlx::Connection as _;
use uuid::Uuid;

use crate::env::init_tracing;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for a test, dropped when the test ends (also when it fails).
pub struct Db {
    pub pool: sqlx::PgPool,
    _cleanup: Cleanup,
}

impl Db {
    pub async fn new() -> Db {
        init_tracing();
        let name = format!("worker_test_{}", Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(ADMIN_URL)
            .await
            .expect("connect to postgres");
        let sql = format!("CREATE DATABASE \"{name}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let cleanup = Cleanup(name.clone());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
            .await
            .expect("connect to the test database");
        Db {
            pool,
            _cleanup: cleanup,
        }
    }
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = self.0.clone();
        // A thread with its own runtime: this runs inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(ADMIN_URL).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}
