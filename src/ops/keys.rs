//! Single keys and whole companies: `authstate keys list|show|delete|stats`, `authstate
//! remove`, per-company statistics, and the paged enumeration behind Baileys' optional
//! `keys.list(type)` / `keys.listIds(type)` (used by its `migrateAuthState`).
//!
//! Deleting in the database does not reach the read cache of a service process that has the
//! company open: stop that account (or the service) first, or the process keeps serving and
//! may re-write what it has in memory.

use serde::Serialize;

use crate::config::Config;
use crate::db::admin::{self as sql, KeyMeta, TypeStats};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::validate;
use crate::value::StoredValue;

/// Rows per round trip of `keys list`.
const PAGE: i64 = 1000;

/// Every key of `company` (of one type when given): metadata only, read page by page.
pub async fn list(config: &Config, company: &str, key_type: Option<&str>) -> Result<Vec<KeyMeta>> {
    validate::company_id(company)?;
    if let Some(t) = key_type {
        validate::key_type(t)?;
    }
    let client = crate::db::plain_client(config).await?;
    let mut out: Vec<KeyMeta> = Vec::new();
    loop {
        let after = out.last().map(|k| (k.key_type.as_str(), k.key_id.as_str()));
        let page = sql::key_meta_page(&client, company, key_type, after, PAGE).await?;
        let done = (page.len() as i64) < PAGE;
        out.extend(page);
        if done {
            if out.is_empty() {
                require_state(&client, company).await?;
            }
            return Ok(out);
        }
    }
}

/// One key with its value (buffers in Baileys' `BufferJSON` form).
#[derive(Debug, Clone, Serialize)]
pub struct ShownKey {
    /// The company.
    pub company_id: String,
    /// Metadata.
    #[serde(flatten)]
    pub meta: KeyMeta,
    /// The value as Baileys reads it.
    pub value: serde_json::Value,
}

/// One key; [`Error::not_found`] when it does not exist.
pub async fn show(
    config: &Config,
    company: &str,
    key_type: &str,
    key_id: &str,
) -> Result<ShownKey> {
    validate::company_id(company)?;
    validate::key_type(key_type)?;
    validate::key_id(key_id)?;
    let client = crate::db::plain_client(config).await?;
    let (meta, text) = sql::key_show(&client, company, key_type, key_id)
        .await?
        .ok_or_else(|| not_found(company, key_type, key_id))?;
    let value = StoredValue::from_db(&text)
        .map_err(|e| e.context(format!("company {company} type {key_type} id {key_id:?}")))?
        .to_value();
    Ok(ShownKey {
        company_id: company.to_string(),
        meta,
        value,
    })
}

/// [`Error::not_found`] when `company` has neither creds nor keys: a mistyped company id must
/// not look like an empty account.
async fn require_state(c: &impl tokio_postgres::GenericClient, company: &str) -> Result<()> {
    if sql::creds(c, company).await?.is_none() && sql::key_counts(c, company).await?.is_empty() {
        return Err(Error::not_found(format!("company {company} has no state")));
    }
    Ok(())
}

fn not_found(company: &str, key_type: &str, key_id: &str) -> Error {
    Error::not_found(format!(
        "company {company} has no key {key_type} {key_id:?}"
    ))
}

/// What [`delete`] did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    /// The company.
    pub company_id: String,
    /// The key type.
    pub key_type: String,
    /// Ids deleted.
    pub deleted: Vec<String>,
    /// Ids that did not exist.
    pub missing: Vec<String>,
}

/// Deletes keys `ids` of one type of `company` in one statement. [`Error::not_found`] when
/// none of them existed (a typo must not look like success).
pub async fn delete(
    config: &Config,
    company: &str,
    key_type: &str,
    ids: &[String],
) -> Result<DeleteReport> {
    validate::company_id(company)?;
    validate::key_type(key_type)?;
    if ids.is_empty() {
        return Err(Error::invalid("name at least one key id to delete"));
    }
    for id in ids {
        validate::key_id(id)?;
    }
    let client = crate::db::plain_client(config).await?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let deleted = sql::key_delete(&client, company, key_type, &refs).await?;
    let missing: Vec<String> = ids
        .iter()
        .filter(|i| !deleted.contains(i))
        .cloned()
        .collect();
    if deleted.is_empty() {
        return Err(not_found(company, key_type, &ids.join(", ")));
    }
    Ok(DeleteReport {
        company_id: company.to_string(),
        key_type: key_type.to_string(),
        deleted,
        missing,
    })
}

/// Statistics of one company (or of the whole database).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The company, `None` for the whole database.
    pub company_id: Option<String>,
    /// Whether the company has creds (`None` for the whole database).
    pub creds: Option<bool>,
    /// Keys in all.
    pub keys: u64,
    /// Bytes of jsonb text in all.
    pub bytes: u64,
    /// Expired keys in all.
    pub expired: u64,
    /// Per key type.
    pub types: Vec<TypeStats>,
}

async fn stats_on(c: &impl tokio_postgres::GenericClient, company: Option<&str>) -> Result<Stats> {
    let types = sql::type_stats(c, company).await?;
    let creds = match company {
        Some(id) => Some(sql::creds(c, id).await?.is_some()),
        None => None,
    };
    Ok(Stats {
        company_id: company.map(str::to_string),
        creds,
        keys: types.iter().map(|t| t.keys).sum(),
        bytes: types.iter().map(|t| t.bytes).sum(),
        expired: types.iter().map(|t| t.expired).sum(),
        types,
    })
}

/// `keys stats`: per type keys, bytes, oldest/newest update and expired keys, of one company
/// or (`None`) of the whole database.
pub async fn stats(config: &Config, company: Option<&str>) -> Result<Stats> {
    if let Some(c) = company {
        validate::company_id(c)?;
    }
    let client = crate::db::plain_client(config).await?;
    let s = stats_on(&client, company).await?;
    if let Some(c) = company {
        if s.keys == 0 && s.creds != Some(true) {
            return Err(Error::not_found(format!("company {c} has no state")));
        }
    }
    Ok(s)
}

/// [`stats`] through a running store's pool (`Store::stats`).
pub(crate) async fn stats_in(db: &Db, company: Option<&str>) -> Result<Stats> {
    if let Some(c) = company {
        validate::company_id(c)?;
    }
    db.call("stats", async |c| stats_on(&***c, company).await)
        .await
}

/// What [`remove`] deleted.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    /// The company.
    pub company_id: String,
    /// Whether creds were deleted.
    pub creds: bool,
    /// Keys deleted.
    pub keys: u64,
}

/// Deletes all state of `company` (creds and every key) in one statement.
/// [`Error::not_found`] when it had none.
pub async fn remove(config: &Config, company: &str) -> Result<RemoveReport> {
    validate::company_id(company)?;
    let client = crate::db::plain_client(config).await?;
    let (creds, keys) = sql::delete_company(&client, company).await?;
    if creds == 0 && keys == 0 {
        return Err(Error::not_found(format!("company {company} has no state")));
    }
    Ok(RemoveReport {
        company_id: company.to_string(),
        creds: creds > 0,
        keys,
    })
}

/// One page of Baileys' `keys.list(type)`: `(id, value)` pairs in id order and the id to pass
/// as `after` for the next page (`None` at the end).
pub type ListPage = (Vec<(String, StoredValue)>, Option<String>);

/// Most rows per page of [`list_page`] / [`list_ids_page`].
pub const MAX_LIST_PAGE: usize = 10_000;

fn check_list(company: &str, key_type: &str, after: Option<&str>, limit: usize) -> Result<i64> {
    validate::company_id(company)?;
    validate::key_type(key_type)?;
    if let Some(a) = after {
        validate::key_id(a)?;
    }
    if limit == 0 || limit > MAX_LIST_PAGE {
        return Err(Error::invalid(format!(
            "page size must be 1 to {MAX_LIST_PAGE}, got {limit}"
        )));
    }
    Ok(limit as i64)
}

/// A page of one type's keys of `company` with values, after id `after`: what a binding's
/// async iterator for `keys.list(type)` pulls, so a type of any size is streamed.
pub(crate) async fn list_page(
    db: &Db,
    company: &str,
    key_type: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<ListPage> {
    let n = check_list(company, key_type, after, limit)?;
    let rows = list_rows(db, company, key_type, after, n, true).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(i, _)| i.clone()))
        .flatten();
    let entries = rows
        .into_iter()
        .map(|(id, v)| {
            let v = StoredValue::from_db(v.as_deref().unwrap_or("null"))
                .map_err(|e| e.context(format!("company {company} type {key_type} id {id:?}")))?;
            Ok((id, v))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((entries, next))
}

/// A page of one type's key ids of `company` after `after`, and the next `after` (`None` at
/// the end): Baileys' `keys.listIds(type)`.
pub(crate) async fn list_ids_page(
    db: &Db,
    company: &str,
    key_type: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, Option<String>)> {
    let n = check_list(company, key_type, after, limit)?;
    let rows = list_rows(db, company, key_type, after, n, false).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(i, _)| i.clone()))
        .flatten();
    Ok((rows.into_iter().map(|(i, _)| i).collect(), next))
}

async fn list_rows(
    db: &Db,
    company: &str,
    key_type: &str,
    after: Option<&str>,
    limit: i64,
    values: bool,
) -> Result<Vec<(String, Option<String>)>> {
    db.call("list", async |c| {
        sql::list_page(&***c, company, key_type, after, limit, values).await
    })
    .await
}
