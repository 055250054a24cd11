//! The `definitions` table: versioned, immutable documents.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::StoreError;

#[derive(Debug, Clone)]
pub struct StoredDefinition {
    pub name: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub document: Value,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<StoredDefinition, sqlx::Error> {
    Ok(StoredDefinition {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        document: row.try_get("document")?,
    })
}

/// Takes the lock that serialises registrations of one name, until the transaction ends.
pub async fn lock_name(conn: &mut PgConnection, name: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('definition:' || $1, 0))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn latest(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<StoredDefinition>, StoreError> {
    let row = sqlx::query(
        "SELECT name, version, created_at, document FROM definitions
         WHERE name = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn get(
    conn: &mut PgConnection,
    name: &str,
    version: i32,
) -> Result<Option<StoredDefinition>, StoreError> {
    let row = sqlx::query(
        "SELECT name, version, created_at, document FROM definitions WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    version: i32,
    document: &Value,
) -> Result<StoredDefinition, StoreError> {
    let row = sqlx::query(
        "INSERT INTO definitions (name, version, document) VALUES ($1, $2, $3)
         RETURNING name, version, created_at, document",
    )
    .bind(name)
    .bind(version)
    .bind(document)
    .fetch_one(conn)
    .await?;
    Ok(from_row(&row)?)
}

/// Every name with its latest version, by name.
pub async fn list_latest(conn: &mut PgConnection) -> Result<Vec<StoredDefinition>, StoreError> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (name) name, version, created_at, document FROM definitions
         ORDER BY name, version DESC",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Every registered definition but the versions in `known` (`(name, version)`): those a process
/// has not parsed yet.
pub async fn all_except(
    conn: &mut PgConnection,
    known: &[(String, i32)],
) -> Result<Vec<StoredDefinition>, StoreError> {
    let (names, versions): (Vec<&str>, Vec<i32>) =
        known.iter().map(|(n, v)| (n.as_str(), *v)).unzip();
    let rows = sqlx::query(
        "SELECT name, version, created_at, document FROM definitions
         WHERE (name, version) NOT IN (SELECT * FROM UNNEST($1::text[], $2::int4[]))",
    )
    .bind(names)
    .bind(versions)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}
