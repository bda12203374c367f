//! `authstate import`: a folder written by Baileys' `useMultiFileAuthState` (any Baileys 6/7
//! file shape, legacy buffer shapes included) into one company's state, in one transaction.
//!
//! The whole folder is parsed and validated before anything is written. A company that
//! already has state is refused unless the caller asks to replace it. After the commit the
//! company is read back and every value compared with the folder's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::files::{self, CREDS_FILE};
use super::io_err;
use crate::config::Config;
use crate::db::admin::{self as sql, KeyRow, Stamps};
use crate::error::{Error, Result};
use crate::validate;
use crate::value::StoredValue;

/// Rows per insert statement (all in the one transaction).
const BATCH: usize = 1000;

/// What to import from where.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The company the folder belongs to.
    pub company: String,
    /// The folder (`creds.json` and `<type>-<id>.json` files).
    pub dir: PathBuf,
    /// Replace the company's existing state instead of refusing.
    pub replace: bool,
    /// Parse and check, write nothing.
    pub dry_run: bool,
}

/// What [`import`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The database, without its password.
    pub database: String,
    /// The company.
    pub company_id: String,
    /// The folder.
    pub dir: PathBuf,
    /// Nothing was written.
    pub dry_run: bool,
    /// Keys the company had before (deleted when replaced).
    pub existing_keys: u64,
    /// Whether the company had creds before.
    pub existing_creds: bool,
    /// Keys imported.
    pub keys: u64,
    /// Keys imported per type.
    pub per_type: BTreeMap<String, u64>,
    /// Files holding `null` (Baileys reads them as absent), not imported.
    pub skipped_null: Vec<String>,
    /// Everything was read back and equals the folder (false in a dry run).
    pub verified: bool,
}

/// A parsed folder: creds and keys with canonical values.
struct Folder {
    creds: StoredValue,
    keys: Vec<KeyRow>,
    skipped_null: Vec<String>,
}

fn read_folder(dir: &Path) -> Result<Folder> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::invalid(format!("{} does not exist", dir.display()))
        } else {
            io_err("inspect", dir, e)
        }
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!("{} is not a folder", dir.display())));
    }
    let mut creds = None;
    let mut keys = Vec::new();
    let mut skipped_null = Vec::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        let entry = entry.map_err(|e| io_err("read", dir, e))?;
        let name = entry.file_name().into_string().map_err(|n| {
            Error::invalid(format!("{}: file name {n:?} is not UTF-8", dir.display()))
        })?;
        // Editors' and file managers' hidden files are not Baileys' business.
        if name.starts_with('.') {
            continue;
        }
        names.push(name);
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "{} is not a file: a Baileys auth folder holds only files",
                path.display()
            )));
        }
        let parsed = files::parse_file_name(&name)?;
        let text = std::fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
        if text.trim() == "null" {
            skipped_null.push(name);
            continue;
        }
        let value = files::read_value(&name, &text)?;
        match parsed {
            None => creds = Some(value),
            Some((key_type, key_id)) => keys.push(KeyRow {
                key_type,
                key_id,
                value: value.as_str().to_string(),
                updated_at: None,
                expires_at: None,
            }),
        }
    }
    let creds = creds.ok_or_else(|| {
        Error::invalid(format!(
            "{} has no {CREDS_FILE}: not a Baileys auth folder",
            dir.display()
        ))
    })?;
    Ok(Folder {
        creds,
        keys,
        skipped_null,
    })
}

/// Imports per `opts` into the database of `config` (migrating it first, so a new database
/// works). See the module documentation.
pub async fn import(config: &Config, opts: &ImportOptions) -> Result<ImportReport> {
    validate::company_id(&opts.company)?;
    let company = opts.company.as_str();
    let folder = read_folder(&opts.dir)?;
    let mut per_type = BTreeMap::new();
    for k in &folder.keys {
        *per_type.entry(k.key_type.clone()).or_default() += 1;
    }
    let mut report = ImportReport {
        database: config.describe(),
        company_id: opts.company.clone(),
        dir: opts.dir.clone(),
        dry_run: opts.dry_run,
        existing_keys: 0,
        existing_creds: false,
        keys: folder.keys.len() as u64,
        per_type,
        skipped_null: folder.skipped_null.clone(),
        verified: false,
    };
    let mut client = crate::db::plain_client(config).await?;
    if opts.dry_run {
        if sql::schema_exists(&client).await? {
            report.existing_keys = sql::key_counts(&client, company).await?.values().sum();
            report.existing_creds = sql::creds(&client, company).await?.is_some();
        }
        refuse_existing(&report, opts.replace)?;
        return Ok(report);
    }
    crate::db::migrate::run(&mut client).await?;

    let tx = client.transaction().await?;
    sql::lock_company(&tx, company).await?;
    report.existing_keys = sql::key_counts(&tx, company).await?.values().sum();
    report.existing_creds = sql::creds(&tx, company).await?.is_some();
    refuse_existing(&report, opts.replace)?;
    sql::delete_company(&tx, company).await?;
    sql::put_creds(&tx, company, folder.creds.as_str(), None).await?;
    for chunk in folder.keys.chunks(BATCH) {
        let ttl: Vec<f64> = chunk
            .iter()
            .map(|k| config.ttl.ttl(&k.key_type).as_secs_f64())
            .collect();
        sql::put_keys(&tx, company, chunk, Stamps::Fresh(&ttl)).await?;
    }
    tx.commit().await?;

    verify(&mut client, company, &folder).await?;
    report.verified = true;
    Ok(report)
}

fn refuse_existing(report: &ImportReport, replace: bool) -> Result<()> {
    if (report.existing_keys > 0 || report.existing_creds) && !replace {
        return Err(Error::invalid(format!(
            "company {} already has state ({} keys{}); pass --replace to replace it",
            report.company_id,
            report.existing_keys,
            if report.existing_creds {
                " and creds"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Reads the company back in one snapshot and compares creds and every key with the folder.
async fn verify(client: &mut tokio_postgres::Client, company: &str, folder: &Folder) -> Result<()> {
    let fail = |what: String| Error::internal(format!("import verification failed: {what}"));
    let tx = sql::snapshot(client).await?;
    let creds = sql::creds(&tx, company)
        .await?
        .ok_or_else(|| fail(format!("company {company} has no creds after the import")))?;
    // jsonb keeps object keys in its own order: compare trees (buffers as exact bytes).
    if StoredValue::from_db(&creds)?.to_value() != folder.creds.to_value() {
        return Err(fail(format!("company {company}: creds differ")));
    }
    let mut want: HashMap<(String, String), &str> = folder
        .keys
        .iter()
        .map(|k| ((k.key_type.clone(), k.key_id.clone()), k.value.as_str()))
        .collect();
    let mut extra = 0u64;
    let mut differ = Vec::new();
    sql::for_each_key_page(&tx, company, 1000, |rows| {
        for row in rows {
            match want.remove(&(row.key_type.clone(), row.key_id.clone())) {
                Some(v) => {
                    let got = StoredValue::from_db(&row.value)?.to_value();
                    if serde_json::from_str::<serde_json::Value>(v).ok() != Some(got) {
                        differ.push(format!("{} {}", row.key_type, row.key_id));
                    }
                }
                None => extra += 1,
            }
        }
        Ok(())
    })
    .await?;
    tx.commit().await?;
    if !want.is_empty() || extra > 0 || !differ.is_empty() {
        return Err(fail(format!(
            "company {company}: {} keys missing, {extra} unexpected, {} differ (e.g. {:?})",
            want.len(),
            differ.len(),
            differ.first()
        )));
    }
    Ok(())
}
